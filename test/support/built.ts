import { inject } from 'vitest';

// The system lane's global setup (test/support/fresh-build.ts) found dist/ out of date and could not build it.
const staleBuild = inject('staleBuild');
if (staleBuild !== null) throw new Error(staleBuild);
