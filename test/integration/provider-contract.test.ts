/** The shared provider contract, run against the local, sim and static providers (aws and gcp run it in their own files). */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalCloudClient } from '../../src/local-cloud/client.js';
import { LocalProvider } from '../../src/providers/local/index.js';
import { SimProvider } from '../../src/providers/sim/index.js';
import { StaticProvider } from '../../src/providers/static/index.js';
import { ensureDirectorKey } from '../../src/ssh/keys.js';
import { contractRequest, describeProviderContract } from '../contract/provider-contract.js';
import { sshdUnavailableReason, startSshdFleet, stopFleet } from '../helpers/sshd-fleet.js';

describeProviderContract('local', async () => {
  const home = mkdtempSync(join(tmpdir(), 'director-contract-local-'));
  const key = ensureDirectorKey(home);
  return {
    provider: new LocalProvider({ cloud: 'local', home }),
    request: (d, i) => contractRequest(d, i, key.publicKey),
    unknownCid: 'local-00000000',
    cleanup: async () => {
      await (await LocalCloudClient.connectIfRunning(home))?.stop();
      rmSync(home, { recursive: true, force: true });
    },
  };
});

describeProviderContract('sim', async () => ({
  provider: new SimProvider({ cloud: 'sim', properties: { persist: false, create_ms: 1, delete_ms: 1 } }),
  request: (d, i) => contractRequest(d, i, 'ssh-ed25519 AAAA sim'),
  unknownCid: 'sim-00000000',
  cleanup: async () => undefined,
}));

// static: three real OpenSSH hosts on 127.253.x.y (outside the local cloud's 127.2–127.250).
const sshdMissing = sshdUnavailableReason();
if (sshdMissing) console.warn(`skipping the static provider contract: ${sshdMissing}`);
else
  describeProviderContract('static', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'director-contract-static-'));
    const home = join(dir, 'home');
    const key = ensureDirectorKey(home);
    const hosts = await startSshdFleet({ count: 3, prefix: '127.253', authorizedKeys: [key.publicKey], root: join(dir, 'hosts') });
    return {
      provider: new StaticProvider({ cloud: 'dc1', home, properties: { hosts: hosts.map((h) => ({ address: h.address, port: h.port, base_dir: h.baseDir })) } }),
      request: (d, i) => contractRequest(d, i, key.publicKey),
      unknownCid: 'static-127.253.200.200:2222',
      cleanup: async () => {
        await stopFleet(hosts);
        rmSync(dir, { recursive: true, force: true });
      },
    };
  });
