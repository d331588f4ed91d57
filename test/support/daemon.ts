import { join } from 'node:path';
import { onTestFinished } from 'vitest';
import { type Daemon, startDaemon } from '../../daemon/index.js';
import { tempDir } from './temp-dir.js';

export interface TestDaemon {
  daemon: Daemon;
  socketPath: string;
  dataDir: string;
  /** Log lines it wrote. */
  logs: string[];
}

/** A daemon in this process on a fresh socket and data directory, stopped when the test finishes. */
export async function startTestDaemon(
  options: { idleTimeoutMs?: number; maxMessageBytes?: number; memoryCacheBytes?: number } = {},
): Promise<TestDaemon> {
  const dir = await tempDir('hd-');
  const socketPath = join(dir, 's.sock');
  const dataDir = join(dir, 'data');
  const logs: string[] = [];
  const daemon = await startDaemon({ socketPath, dataDir, idleTimeoutMs: options.idleTimeoutMs ?? 0, maxMessageBytes: options.maxMessageBytes, memoryCacheBytes: options.memoryCacheBytes, log: (line) => logs.push(line) });
  onTestFinished(() => daemon.close());
  return { daemon, socketPath, dataDir, logs };
}
