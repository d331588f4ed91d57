export { connect, type ConnectOptions, type DaemonLauncher } from './connect.js';
export { connectStdio, type ConnectStdioOptions } from './connect-stdio.js';
export { RemoteCache } from './remote-cache.js';
export type { GcResult, LockInfo, ScopeStatus, StatusResult } from '../src/wire/protocol.js';
export type { TransportName } from './open-channel.js';
