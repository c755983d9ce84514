/** The shared provider contract, run against the local and sim providers (static, aws and gcp run it in their own files). */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalCloudClient } from '../../src/local-cloud/client.js';
import { LocalProvider } from '../../src/providers/local/index.js';
import { SimProvider } from '../../src/providers/sim/index.js';
import { ensureDirectorKey } from '../../src/ssh/keys.js';
import { contractRequest, describeProviderContract } from '../contract/provider-contract.js';

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
