// A spec-strict OpenID provider for tests: panva's OpenID-certified oidc-provider, configured strictly.
//
// - one public native client (broker-cli): code grant with PKCE (S256, required for public clients),
//   device grant (RFC 8628), refresh grant; loopback redirect URIs on any port (RFC 8252 §7.3);
// - access tokens live ACCESS_TOKEN_TTL seconds (default 10);
// - refresh tokens rotate on every use; a spent one presented again revokes the whole grant;
// - offline_access (hence a refresh token) only with consent: oidc-provider drops the scope from a
//   code-grant request whose prompt lacks "consent" (OpenID Connect Core §11);
// - authorization responses carry iss (RFC 9207), and the metadata says so.
//
// Usage: node oidc_provider.mjs PACKAGE_DIR [ACCESS_TOKEN_TTL]; PACKAGE_DIR is the installed
// oidc-provider (tests.peers.npm_package). Login and consent are the user's part: GET /interaction/:uid answers the pending prompt as JSON,
// POST /interaction/:uid/login {login} signs the user in, POST /interaction/:uid/consent grants what
// the client asked. Listens on 127.0.0.1 at a free port; prints {"issuer": ...} once ready, then one
// JSON line per token endpoint answer ({"event": "grant", ...} or {"event": "grant_error", ...}) and
// per revoked grant ({"event": "grant_revoked"}).

import { randomBytes, generateKeyPairSync } from 'node:crypto';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

// stdout carries our JSON lines only: the library's notices go to stderr.
for (const level of ['log', 'info', 'warn']) console[level] = console.error;

const { default: Provider } = await import(pathToFileURL(join(process.argv[2], 'lib', 'index.js')).href);
const accessTokenTtl = Number(process.argv[3] || 10);
const say = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);

const signingKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });

const server = createServer();
server.listen(0, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: 'broker-cli',
      application_type: 'native',
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1/callback'],
    }],
    jwks: { keys: [{ ...signingKey, kid: 'k1', use: 'sig', alg: 'RS256' }] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    scopes: ['openid', 'offline_access', 'email'],
    claims: { openid: ['sub'], email: ['email', 'email_verified'] },
    findAccount: async (_ctx, id) => ({
      accountId: id,
      claims: async () => ({ sub: id, email: `${id}@example.com`, email_verified: true }),
    }),
    features: {
      devInteractions: { enabled: false },
      deviceFlow: { enabled: true },
      revocation: { enabled: true },
    },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    rotateRefreshToken: true,
    ttl: {
      AccessToken: accessTokenTtl,
      AuthorizationCode: 60,
      DeviceCode: 600,
      IdToken: 3600,
      RefreshToken: 86400,
      Interaction: 600,
      Session: 3600,
      Grant: 86400,
    },
  });

  provider.on('grant.success', (ctx) => say({
    event: 'grant',
    grant_type: ctx.oidc.params.grant_type,
    expires_in: ctx.body.expires_in,
    scope: ctx.body.scope,
    refresh_token: Boolean(ctx.body.refresh_token),
    id_token: Boolean(ctx.body.id_token),
  }));
  provider.on('grant.error', (ctx, error) => say({
    event: 'grant_error', grant_type: ctx.oidc.params?.grant_type, error: error.error, description: error.error_description,
  }));
  provider.on('grant.revoked', () => say({ event: 'grant_revoked' }));

  const oidc = provider.callback();
  server.on('request', (req, res) => {
    const match = /^\/interaction\/([\w-]+)(\/login|\/consent)?$/.exec(req.url);
    if (!match) {
      oidc(req, res);
      return;
    }
    interact(provider, req, res, match[2]).catch((error) => {
      res.statusCode = 400;
      res.setHeader('Content-Type', 'application/json');
      res.end(JSON.stringify({ error: error.name, message: error.message }));
    });
  });
  say({ issuer });
});

async function interact(provider, req, res, step) {
  const interaction = await provider.interactionDetails(req, res);
  const { prompt, params, session } = interaction;
  if (!step) {
    res.setHeader('Content-Type', 'application/json');
    res.end(JSON.stringify({ prompt: prompt.name, reasons: prompt.reasons, details: prompt.details, scope: params.scope, prompt_param: params.prompt }));
    return;
  }
  if (step === '/login') {
    const login = new URLSearchParams(await body(req)).get('login');
    if (prompt.name !== 'login' || !login) throw new Error(`no login expected (prompt: ${prompt.name})`);
    await provider.interactionFinished(req, res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
    return;
  }
  if (prompt.name !== 'consent') throw new Error(`no consent expected (prompt: ${prompt.name})`);
  const grant = interaction.grantId
    ? await provider.Grant.find(interaction.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  const { missingOIDCScope, missingOIDCClaims, missingResourceScopes } = prompt.details;
  if (missingOIDCScope) grant.addOIDCScope(missingOIDCScope.join(' '));
  if (missingOIDCClaims) grant.addOIDCClaims(missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missingResourceScopes || {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  const consent = interaction.grantId ? {} : { grantId };
  await provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
}

function body(req) {
  return new Promise((resolve, reject) => {
    let text = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => { text += chunk; });
    req.on('end', () => resolve(text));
    req.on('error', reject);
  });
}
