export { type Daemon, type DaemonOptions, startDaemon } from './daemon.js';
export type { TierOptions } from './tier-options.js';
export { defaultDataDir, defaultSocketPath, MAX_SOCKET_PATH_BYTES } from '../src/wire/paths.js';
