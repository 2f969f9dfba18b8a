// A third-party LwM2M client for tests/lwm2m_interop.rs: lwm2m-node-lib
// 1.4.0 (npm, Telefonica's FIWARE client) with the Device object /3 and the
// Firmware Update object /5 (OMA 5.xml) scripted on its object registry.
// Pull delivery: a write of /5/0/1 fetches the URI with node-coap's Block2
// client; Execute /5/0/2 "installs" it (/3/0/3 becomes NEXT_VERSION).
//
// usage: node node_client.js HOST PORT ENDPOINT VERSION NEXT_VERSION [METHOD PROTOCOL]
// METHOD and PROTOCOL, when given, are /5/0/9 Delivery Method and the one
// /5/0/8 Protocol Support value; without them the object has neither
// (both are optional in 5.xml).
// Prints one JSON line per event on stdout.
'use strict';

const crypto = require('crypto');
const coap = require('coap');
const lwm2m = require('lwm2m-node-lib');

const [host, port, endpoint, version, nextVersion, method, protocol] = process.argv.slice(2);
const client = lwm2m.client;
const reg = client.registry;
const say = (o) => process.stdout.write(JSON.stringify(o) + '\n');

client.init({
  client: {
    lifetime: '300',
    version: '1.0',
    logLevel: 'FATAL',
    observe: { period: 3000 },
    ipProtocol: 'udp4',
    serverProtocol: 'udp4',
    port: 0,
  },
});

const set = (obj, res, value) =>
  new Promise((ok, fail) => reg.setResource(obj, res, String(value), (e) => (e ? fail(e) : ok())));
const create = (obj) => new Promise((ok, fail) => reg.create(obj, (e) => (e ? fail(e) : ok())));

function pull(uri) {
  set('/5/0', '3', 1); // Downloading
  const req = coap.request(uri);
  const chunks = [];
  req.on('response', (res) => {
    res.on('data', (c) => chunks.push(c));
    res.on('end', () => {
      if (res.code !== '2.05') {
        set('/5/0', '3', 0);
        set('/5/0', '5', 4); // connection lost during download
        say({ event: 'download_failed', code: res.code });
        return;
      }
      const data = Buffer.concat(chunks);
      const sha256 = crypto.createHash('sha256').update(data).digest('hex');
      set('/5/0', '3', 2); // Downloaded
      say({ event: 'downloaded', bytes: data.length, sha256 });
    });
  });
  req.on('error', (e) => {
    set('/5/0', '3', 0);
    set('/5/0', '5', 4);
    say({ event: 'download_failed', error: String(e) });
  });
  req.end();
}

async function main() {
  await create('/3/0');
  await set('/3/0', '3', version);
  await create('/5/0');
  await set('/5/0', '1', '');
  await set('/5/0', '3', 0);
  await set('/5/0', '5', 0);
  if (method !== undefined) await set('/5/0', '9', method);
  // The library keeps one value per resource: a read of /5/0/8 is
  // answered as text/plain, which the gateway takes as one instance.
  if (protocol !== undefined) await set('/5/0', '8', protocol);
  client.register(host, Number(port), null, endpoint, (err, device) => {
    if (err) {
      say({ event: 'register_failed', error: String(err && (err.message || err.name || err)) });
      process.exit(2);
    }
    say({ event: 'registered', location: device.location });
    client.setHandler(device.serverInfo, 'write', (type, id, res, value, cb) => {
      if (String(type) === '5' && String(res) === '1') {
        const uri = String(value).trim();
        say({ event: 'uri', uri });
        if (uri === '') {
          set('/5/0', '3', 0);
          set('/5/0', '5', 0);
        } else {
          set('/5/0', '5', 0);
          setImmediate(() => pull(uri));
        }
      }
      cb(null);
    });
    client.setHandler(device.serverInfo, 'execute', (type, id, res, args, cb) => {
      if (String(type) === '5' && String(res) === '2') {
        set('/3/0', '3', nextVersion);
        set('/5/0', '3', 0);
        set('/5/0', '5', 1); // Firmware updated successfully
        say({ event: 'updated', version: nextVersion });
      }
      cb(null);
    });
    client.setHandler(device.serverInfo, 'read', (type, id, res, value, cb) => cb(null, value));
    process.on('SIGTERM', () => client.unregister(device, () => process.exit(0)));
  });
}

main().catch((e) => {
  say({ event: 'error', error: String(e) });
  process.exit(1);
});
