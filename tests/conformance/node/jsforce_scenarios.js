'use strict';
// jsforce, unchanged, against the Salesforce emulator: one scenario per run.
//
//   node jsforce_scenarios.js <scenario>
//
// tests/conformance/test_jsforce.py starts the emulator, creates an org of its own for these runs,
// and passes what the scenarios need in JSFORCE_CONFORMANCE (JSON: instanceUrl, username,
// password, clientId, clientSecret, publicClientId, redirectUri, adminToken, orgId, tag,
// latestVersion). It resolves jsforce through NODE_PATH (installed by `make node-conformance`) and
// trusts the emulator's CA through NODE_EXTRA_CA_CERTS.
//
// Each scenario prints one line, `RESULT <json>`, which the Python test asserts on; jsforce's own
// log lines may surround it. A failure prints `FAILED <message>` and exits 1. Scenarios never
// sleep: where the emulator works asynchronously (Bulk jobs) jsforce's own polling waits, and
// getUpdated/getDeleted poll until the minute holding the writes is covered.

const jsforce = require('jsforce');

const config = JSON.parse(process.env.JSFORCE_CONFORMANCE || '{}');
const tag = config.tag;

// What a failed call reports: Salesforce's errorCode (REST) or the OAuth error name, and the message.
async function errorOf(promise) {
  try {
    await promise;
    return null;
  } catch (err) {
    return { errorCode: err.errorCode || err.name, message: err.message };
  }
}

async function admin(method, path) {
  const response = await fetch(`${config.instanceUrl}/__emulator__${path}`, {
    method,
    headers: { Authorization: `Bearer ${config.adminToken}` },
  });
  if (!response.ok) {
    throw new Error(`admin ${method} ${path}: ${response.status} ${await response.text()}`);
  }
  return response.json();
}

function oauth2(options = {}) {
  return new jsforce.OAuth2({
    loginUrl: config.instanceUrl,
    clientId: config.clientId,
    clientSecret: config.clientSecret,
    redirectUri: config.redirectUri,
    ...options,
  });
}

// The username-password flow, at jsforce's default API version unless told otherwise.
async function passwordLogin(options = {}) {
  const conn = new jsforce.Connection({ oauth2: oauth2(), ...options });
  await conn.login(config.username, config.password);
  return conn;
}

// The web-server flow as a browser would drive it: follow /authorize to the callback, take the code.
async function authorizationCode(client, params) {
  const response = await fetch(client.getAuthorizationUrl(params), { redirect: 'manual' });
  const location = new URL(response.headers.get('location'));
  return { code: location.searchParams.get('code'), state: location.searchParams.get('state') };
}

function pollOptions() {
  return { pollInterval: 100, pollTimeout: 60000 };
}

const scenarios = {
  // SOAP login at jsforce's default version, identity, a query, SOAP logout; login is gone from 65.0.
  async 'soap-login'() {
    const conn = new jsforce.Connection({ loginUrl: config.instanceUrl });
    const version = conn.version;
    const userInfo = await conn.login(config.username, config.password);
    const identity = await conn.identity();
    const count = await conn.query('SELECT COUNT() FROM Account');
    const serverTime = await conn.soap.getServerTimestamp();
    const soapUser = await conn.soap.getUserInfo();
    const token = conn.accessToken;
    await conn.logout();
    const stale = new jsforce.Connection({ instanceUrl: config.instanceUrl, accessToken: token });
    const modern = new jsforce.Connection({ loginUrl: config.instanceUrl, version: '65.0' });
    return {
      version,
      userId: userInfo.id,
      orgId: userInfo.organizationId,
      identityUsername: identity.username,
      totalSize: count.totalSize,
      serverTimestamp: serverTime.timestamp,
      soapUserName: soapUser.userName,
      accessTokenAfterLogout: conn.accessToken || null,
      afterLogout: await errorOf(stale.query('SELECT Id FROM Account LIMIT 1')),
      loginAt65: await errorOf(modern.login(config.username, config.password)),
    };
  },

  // The username-password flow at the default version and at the latest one; usage; OAuth logout.
  async 'oauth-password'() {
    const conn = await passwordLogin();
    const latest = await passwordLogin({ version: config.latestVersion });
    const created = await latest.sobject('Account').create({ Name: `${tag} password` });
    const soql = `SELECT Id FROM Account WHERE Id = '${created.id}'`;
    const query = await conn.query(soql);
    const onLatest = await latest.query(soql);
    const limits = await latest.limits();
    const token = conn.accessToken;
    const { userInfo } = conn;
    await conn.logout();
    const stale = new jsforce.Connection({ instanceUrl: config.instanceUrl, accessToken: token });
    const badPassword = new jsforce.Connection({ oauth2: oauth2() });
    return {
      version: conn.version,
      latestVersion: latest.version,
      userId: userInfo.id,
      orgId: userInfo.organizationId,
      instanceUrl: latest.instanceUrl,
      accessTokenAfterLogout: conn.accessToken || null,
      createdId: created.id,
      recordUrl: query.records[0].attributes.url,
      latestRecordUrl: onLatest.records[0].attributes.url,
      apiUsage: latest.limitInfo.apiUsage || null,
      dailyApiRequests: limits.DailyApiRequests,
      afterLogout: await errorOf(stale.query('SELECT Id FROM Account LIMIT 1')),
      badPassword: await errorOf(badPassword.login(config.username, 'wrong')),
    };
  },

  // The web-server flow with jsforce's own PKCE (a 171-character verifier), for a public client.
  async 'web-server'() {
    const client = oauth2({ clientId: config.publicClientId, clientSecret: undefined, useVerifier: true });
    const { code, state } = await authorizationCode(client, { scope: 'api refresh_token', state: 'jsforce-state' });
    const conn = new jsforce.Connection({ oauth2: client });
    const userInfo = await conn.authorize(code);
    const query = await conn.query('SELECT COUNT() FROM Account');
    // Another client's verifier does not fit this code's challenge.
    const other = oauth2({ clientId: config.publicClientId, clientSecret: undefined, useVerifier: true });
    const second = await authorizationCode(client, { scope: 'api refresh_token' });
    return {
      verifierLength: client.codeVerifier.length,
      state,
      userId: userInfo.id,
      orgId: userInfo.organizationId,
      hasRefreshToken: Boolean(conn.refreshToken),
      totalSize: query.totalSize,
      replayedCode: await errorOf(new jsforce.Connection({ oauth2: client }).authorize(code)),
      wrongVerifier: await errorOf(new jsforce.Connection({ oauth2: other }).authorize(second.code)),
    };
  },

  // A session restored from stored tokens: identity from the version's resources, then an expired
  // access token that jsforce refreshes on its own, and an explicit refresh.
  async refresh() {
    const client = oauth2({ clientId: config.publicClientId, clientSecret: undefined, useVerifier: true });
    const { code } = await authorizationCode(client, { scope: 'api refresh_token' });
    const first = new jsforce.Connection({ oauth2: client });
    await first.authorize(code);

    const restored = new jsforce.Connection({
      oauth2: oauth2({ clientId: config.publicClientId, clientSecret: undefined }),
      instanceUrl: first.instanceUrl,
      accessToken: first.accessToken,
      refreshToken: first.refreshToken,
    });
    const identity = await restored.identity();
    let refreshedTo = null;
    restored.on('refresh', (accessToken) => {
      refreshedTo = accessToken;
    });
    const expired = await admin('POST', `/orgs/${config.orgId}/tokens/expire`);
    const query = await restored.query('SELECT COUNT() FROM Account');
    const explicit = await restored.oauth2.refreshToken(first.refreshToken);
    return {
      identityUserId: identity.user_id,
      identityOrgId: identity.organization_id,
      expired: expired.expired,
      refreshed: refreshedTo !== null && refreshedTo !== first.accessToken,
      totalSize: query.totalSize,
      explicitHasAccessToken: typeof explicit.access_token === 'string',
      explicitInstanceUrl: explicit.instance_url,
      badRefresh: await errorOf(restored.oauth2.refreshToken('not-a-refresh-token')),
    };
  },

  // Single-record CRUD, upsert by external id, describe and describe-global.
  async crud() {
    const conn = await passwordLogin();
    const Account = conn.sobject('Account');
    const created = await Account.create({ Name: `${tag} crud`, BillingCity: 'Lyon' });
    const read = await Account.retrieve(created.id);
    await Account.update({ Id: created.id, BillingCity: 'Nantes' });
    const reread = await Account.retrieve(created.id, { fields: ['BillingCity'] });
    const destroyed = await Account.destroy(created.id);
    const ext = `${tag}-upsert`;
    const inserted = await Account.upsert({ Name: `${tag} upsert`, Duplex_Id__c: ext }, 'Duplex_Id__c');
    const updated = await Account.upsert({ Name: `${tag} upserted`, Duplex_Id__c: ext }, 'Duplex_Id__c');
    const upserted = await Account.retrieve(inserted.id, { fields: ['Name', 'Duplex_Id__c'] });
    const describe = await Account.describe();
    const global = await conn.describeGlobal();
    return {
      created,
      readName: read.Name,
      readCity: read.BillingCity,
      rereadCity: reread.BillingCity,
      destroyed,
      afterDestroy: await errorOf(Account.retrieve(created.id)),
      inserted,
      updated,
      upsertedName: upserted.Name,
      describeName: describe.name,
      describeKeyPrefix: describe.keyPrefix,
      describeFields: describe.fields.map((f) => f.name),
      externalId: describe.fields.filter((f) => f.externalId).map((f) => f.name),
      globalNames: global.sobjects.map((s) => s.name),
      maxBatchSize: global.maxBatchSize,
    };
  },

  // sObject Collections: jsforce sends arrays through /composite/sobjects (API 42.0 and later).
  async collections() {
    const conn = await passwordLogin();
    const Account = conn.sobject('Account');
    const names = [1, 2, 3].map((n) => `${tag} collection ${n}`);
    const created = await Account.create(names.map((Name) => ({ Name })));
    const ids = created.map((r) => r.id);
    const updated = await Account.update(ids.map((Id, n) => ({ Id, Phone: `555-000${n}` })));
    const read = await Account.retrieve(ids, { fields: ['Name', 'Phone'] });
    const mixed = await Account.create([{ Name: `${tag} collection ok` }, { Phone: 'no name' }]);
    const rolledBack = await Account.create([{ Name: `${tag} rolled back` }, { Phone: 'no name' }], {
      allOrNone: true,
    });
    const destroyed = await Account.destroy([...ids, mixed[0].id]);
    const rolledBackLeft = await conn.query(`SELECT COUNT() FROM Account WHERE Name = '${tag} rolled back'`);
    return {
      created,
      updated,
      read: read.map((r) => ({ Name: r.Name, Phone: r.Phone })),
      mixed,
      rolledBack,
      rolledBackLeft: rolledBackLeft.totalSize,
      destroyed,
    };
  },

  // Bulk API 2.0 ingest (insert then delete) and a query job read back in pages.
  async bulk2() {
    const conn = await passwordLogin();
    const total = 2050;
    const rows = Array.from({ length: total }, (_, n) => ({
      Name: `${tag} bulk ${String(n).padStart(4, '0')}`,
      Duplex_Id__c: `${tag}-bulk-${n}`,
    }));
    const loaded = await conn.bulk2.loadAndWaitForResults({
      object: 'Account',
      operation: 'insert',
      input: rows,
      ...pollOptions(),
    });
    const failing = await conn.bulk2.loadAndWaitForResults({
      object: 'Account',
      operation: 'insert',
      input: [
        { Name: `${tag} other ok`, Phone: '555-0101' },
        { Name: '', Phone: '555-0102' },
      ],
      ...pollOptions(),
    });
    const stream = await conn.bulk2.query(`SELECT Id, Name FROM Account WHERE Name LIKE '${tag} bulk 0%'`, pollOptions());
    const queried = await stream.toArray();
    return {
      successful: loaded.successfulResults.length,
      failed: loaded.failedResults.length,
      firstSuccess: loaded.successfulResults[0],
      failingSuccessful: failing.successfulResults.length,
      failingErrors: failing.failedResults.map((r) => r.sf__Error),
      queried: queried.length,
      queriedNames: [...new Set(queried.map((r) => r.Name.slice(0, `${tag} bulk 0`.length)))],
      queriedIdsValid: queried.every((r) => typeof r.Id === 'string' && r.Id.length === 18),
    };
  },

  // Query paging over the records the bulk2 scenario loaded: 2,050 rows are more than one page.
  async 'query-paging'() {
    const conn = await passwordLogin();
    const soql = `SELECT Id, Name FROM Account WHERE Name LIKE '${tag} bulk %' ORDER BY Name`;
    const first = await conn.query(soql);
    const more = await conn.queryMore(first.nextRecordsUrl);
    const all = await conn.query(soql, { autoFetch: true, maxFetch: 10000 });
    const found = await conn
      .sobject('Account')
      .find({ Name: { $like: `${tag} bulk %` } }, ['Id'])
      .execute({ autoFetch: true, maxFetch: 10000 });
    const withDeleted = await conn.query(`SELECT COUNT() FROM Account WHERE Name LIKE '${tag}%'`, { scanAll: true });
    return {
      firstDone: first.done,
      firstSize: first.records.length,
      totalSize: first.totalSize,
      nextRecordsUrl: first.nextRecordsUrl,
      moreDone: more.done,
      moreSize: more.records.length,
      allSize: all.records.length,
      allDistinct: new Set(all.records.map((r) => r.Id)).size,
      foundSize: found.length,
      queryAllTotal: withDeleted.totalSize,
    };
  },

  // The errors clients branch on, with Salesforce's errorCode.
  async errors() {
    const conn = await passwordLogin();
    const retired = new jsforce.Connection({ instanceUrl: conn.instanceUrl, accessToken: conn.accessToken, version: '30.0' });
    const unreleased = new jsforce.Connection({
      instanceUrl: conn.instanceUrl,
      accessToken: conn.accessToken,
      version: `${Number(config.latestVersion) + 1}.0`,
    });
    return {
      invalidField: await errorOf(conn.query('SELECT Nope__c FROM Account')),
      malformedQuery: await errorOf(conn.query('SELECT Id FORM Account')),
      invalidType: await errorOf(conn.query('SELECT Id FROM Nope__c')),
      unknownObject: await errorOf(conn.sobject('Nope__c').describe()),
      requiredField: await errorOf(conn.sobject('Account').create({ Phone: 'no name' })),
      malformedId: await errorOf(conn.sobject('Account').retrieve('not-an-id')),
      notFound: await errorOf(conn.sobject('Account').retrieve('001000000000000AAA')),
      unknownResource: await errorOf(conn.request(`/services/data/v${conn.version}/nowhere`)),
      retiredVersion: await errorOf(retired.query('SELECT Id FROM Account LIMIT 1')),
      unreleasedVersion: await errorOf(unreleased.query('SELECT Id FROM Account LIMIT 1')),
    };
  },

  // getUpdated / getDeleted. Salesforce covers whole minutes, so a write is listed once the minute
  // holding it has passed: poll until latestDateCovered is past the writes (at most ~a minute).
  async replication() {
    const conn = await passwordLogin();
    const Account = conn.sobject('Account');
    const start = new Date(Date.now() - 60 * 1000);
    const kept = await Account.create({ Name: `${tag} window kept` });
    await Account.update({ Id: kept.id, Phone: '555-0100' });
    const gone = await Account.create({ Name: `${tag} window gone` });
    await Account.destroy(gone.id);
    const stamps = await conn.query(
      `SELECT Id, SystemModstamp FROM Account WHERE Id IN ('${kept.id}', '${gone.id}')`,
      { scanAll: true },
    );
    const lastWrite = Math.max(...stamps.records.map((r) => Date.parse(r.SystemModstamp.replace('+0000', 'Z'))));
    const end = new Date(Date.now() + 60 * 1000);
    const deadline = Date.now() + 90 * 1000;
    let updated;
    let deleted;
    let polls = 0;
    for (;;) {
      polls += 1;
      updated = await Account.updated(start, end);
      deleted = await Account.deleted(start, end);
      const covered = Math.min(Date.parse(updated.latestDateCovered), Date.parse(deleted.latestDateCovered));
      if (covered > lastWrite) break;
      if (Date.now() > deadline) throw new Error(`getUpdated never covered ${new Date(lastWrite).toISOString()}`);
      await new Promise((resolve) => setTimeout(resolve, 1000)); // the next poll, not a fixed wait
    }
    return {
      polls,
      keptListed: updated.ids.includes(kept.id),
      goneListedAsUpdated: updated.ids.includes(gone.id),
      goneDeleted: deleted.deletedRecords.some((r) => r.id === gone.id),
      keptDeleted: deleted.deletedRecords.some((r) => r.id === kept.id),
      latestDateCovered: updated.latestDateCovered,
      earliestDateAvailable: deleted.earliestDateAvailable,
    };
  },
};

async function main() {
  const name = process.argv[2];
  const scenario = scenarios[name];
  if (!scenario) {
    throw new Error(`unknown scenario ${name}; known: ${Object.keys(scenarios).join(', ')}`);
  }
  process.stdout.write(`RESULT ${JSON.stringify(await scenario())}\n`);
}

main().catch((err) => {
  process.stdout.write(`FAILED ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
