// Runs the peer's bundled SQL migrations (schema "stripe") through its CommonJS entry: in 0.48.5
// the ESM build's runMigrations() hits `__dirname`, logs the ReferenceError and returns without
// creating a table (found by the peer harness written for issue 20, peers/stripe-sync-engine).
'use strict';
const { runMigrations } = require('@supabase/stripe-sync-engine');
let failed = false;
const fmt = (a) => a.map((x) => (x instanceof Error ? x.stack : typeof x === 'object' ? JSON.stringify(x) : String(x)));
const logger = {
  info: () => {},
  warn: (...a) => console.warn('[migrate]', ...fmt(a)),
  error: (...a) => { failed = true; console.error('[migrate:error]', ...fmt(a)); },
};
runMigrations({ databaseUrl: process.env.DATABASE_URL, schema: 'stripe', logger }).then(() => {
  process.exit(failed ? 1 : 0);
});
