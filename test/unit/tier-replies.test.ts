import { ErrorReply } from '@redis/client';
import { expect, test } from 'vitest';
import { isAnsweredReply } from '../../daemon/tier-connection.js';

/** Which error replies the shared tier takes as Redis's answer for good (a change given up) and which as passing. */

test('an ACL refusal, a wrong type or a script error is answered; a slot moving, MISCONF, NOAUTH, OOM and a server that cannot serve now are not', () => {
  const answered = [
    'NOPERM User reader has no permissions to run the \'evalsha\' command',
    'WRONGTYPE Operation against a key holding the wrong kind of value script: 3c8b, on @user_script:1.',
    'ERR user_script:1: Script attempted to access nonexistent global variable',
  ];
  const passing = [
    'MOVED 3999 127.0.0.1:6381',
    'ASK 3999 127.0.0.1:6381',
    "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk. script: 57f1, on @user_script:1.",
    'NOAUTH Authentication required.',
    'OOM command not allowed when used memory > \'maxmemory\'.',
    'LOADING Redis is loading the dataset in memory',
    'BUSY Redis is busy running a script.',
    'TRYAGAIN Multiple keys request during rehashing of slot',
    'CLUSTERDOWN The cluster is down',
    'MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to \'no\'.',
    "READONLY You can't write against a read only replica.",
  ];
  expect(answered.filter((message) => !isAnsweredReply(new ErrorReply(message)))).toEqual([]);
  expect(passing.filter((message) => isAnsweredReply(new ErrorReply(message)))).toEqual([]);
  // Not a reply at all (a timeout, a lost connection): never answered.
  expect(isAnsweredReply(new Error('timed out after 1000 ms'))).toBe(false);
});
