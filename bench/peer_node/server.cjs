// The peer of section 8: @supabase/stripe-sync-engine's processWebhook() behind node:http, shaped
// like the package's own Fastify route (POST /webhooks -> 200, 400 on any error). Adapted from the
// peer harness written for issue 20 (peers/stripe-sync-engine/server.cjs). scripts/bench copies it
// next to the npm-installed package and runs it; nothing here is the peer's own code.
//
// Env: DATABASE_URL, WEBHOOK_SECRET, PORT (127.0.0.1 only), POOL_MAX (library default 10).
// The library's Stripe client is pinned to 127.0.0.1:9 so that an unexpected API call fails
// at once instead of leaving the machine; GET /stats counts such calls (0 expected).
'use strict';
const http = require('node:http');
const Stripe = require('stripe');
const { StripeSync } = require('@supabase/stripe-sync-engine');

const API_VERSION = '2020-08-27';
const sync = new StripeSync({
  poolConfig: { connectionString: process.env.DATABASE_URL, max: Number(process.env.POOL_MAX || 10) },
  stripeSecretKey: 'sk_test_local',
  stripeWebhookSecret: process.env.WEBHOOK_SECRET,
  stripeApiVersion: API_VERSION,
});
sync.stripe = new Stripe('sk_test_local', {
  apiVersion: API_VERSION, host: '127.0.0.1', port: 9, protocol: 'http', maxNetworkRetries: 0, timeout: 2000,
});
const stats = { ok: 0, failed: 0, stripeApiRequests: 0, errors: {} };
sync.stripe.on('request', () => { stats.stripeApiRequests += 1; });

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/stats') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(stats));
    return;
  }
  if (req.method !== 'POST' || req.url !== '/webhooks') { res.writeHead(404); res.end(); return; }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', async () => {
    try {
      await sync.processWebhook(Buffer.concat(chunks), req.headers['stripe-signature']);
      stats.ok += 1;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"received":true}');
    } catch (err) {
      stats.failed += 1;
      const msg = (err && err.message ? err.message : String(err)).slice(0, 120);
      stats.errors[msg] = (stats.errors[msg] || 0) + 1;
      res.writeHead(400, { 'content-type': 'text/plain' });
      res.end(`Webhook Error: ${msg}`);
    }
  });
});
server.keepAliveTimeout = 65000;
server.listen(Number(process.env.PORT), '127.0.0.1', () => {
  console.log(JSON.stringify({ listening: Number(process.env.PORT), pid: process.pid }));
});
async function shutdown() {
  server.close();
  await sync.close().catch(() => {});
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
