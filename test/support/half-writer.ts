/**
 * A worker process's script (an ES module, the path last in its argv): writes 64 KiB of byte 7 to the path in two
 * halves, printing `half` between them and waiting for a line on stdin, then prints `done`.
 */
export const HALF_WRITER = `
import { open } from 'node:fs/promises';
import { createInterface } from 'node:readline';
const file = await open(process.argv.at(-1), 'r+');
await file.write(Buffer.alloc(32 * 1024, 7), 0, 32 * 1024, 0);
console.log('half');
for await (const _ of createInterface({ input: process.stdin })) break;
await file.write(Buffer.alloc(32 * 1024, 7), 0, 32 * 1024, 32 * 1024);
await file.close();
console.log('done');
`;
