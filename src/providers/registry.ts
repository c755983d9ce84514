/** Builds one provider per cloud of the cloud-config that a deployment uses. */
import { userError } from '../errors.js';
import type { CloudConfig, CloudDef } from '../manifest/types.js';
import { AwsProvider } from './aws/index.js';
import { GcpProvider } from './gcp/index.js';
import { LocalProvider } from './local/index.js';
import type { Provider } from './provider.js';
import { SimProvider } from './sim/index.js';
import { StaticProvider } from './static/index.js';
import { RateLimitedProvider, rateLimitFromProperties } from './throttle.js';

export class ProviderSet {
  private readonly providers = new Map<string, Provider>();

  constructor(private readonly clouds: CloudDef[], private readonly home: string) {}

  static forCloudConfig(cc: CloudConfig, home: string): ProviderSet {
    return new ProviderSet(cc.clouds, home);
  }

  def(cloud: string): CloudDef {
    const def = this.clouds.find((c) => c.name === cloud);
    if (!def) throw userError('cloud_unknown', `cloud '${cloud}' is not defined in the cloud-config`, { hint: `clouds defined: ${this.clouds.map((c) => c.name).join(', ')}` });
    return def;
  }

  get(cloud: string): Provider {
    let p = this.providers.get(cloud);
    if (!p) {
      const def = this.def(cloud);
      // Every adapter sits behind its cloud's API rate limit, with throttling retried, not failed.
      switch (def.type) {
        case 'aws':
          // EC2 meters API calls per account and region with token buckets (non-mutating calls
          // refill ~20/s from a bucket of 100; mutating ones refill slower from a smaller bucket):
          // 20/s with a burst of 100 stays near that, and RequestLimitExceeded is retried anyway.
          p = new RateLimitedProvider(new AwsProvider({ cloud: def.name, properties: def.properties }), rateLimitFromProperties(def.name, def.properties, { ratePerSec: 20, burst: 100 }));
          break;
        case 'local':
          p = new RateLimitedProvider(new LocalProvider({ cloud: def.name, home: this.home }), rateLimitFromProperties(def.name, def.properties, { ratePerSec: 1000, burst: 1000 }));
          break;
        case 'sim':
          p = new RateLimitedProvider(new SimProvider({ cloud: def.name, home: this.home, properties: def.properties }), rateLimitFromProperties(def.name, def.properties, { ratePerSec: 100, burst: 100 }));
          break;
        case 'static':
          // Assignments are local file operations plus one SSH call per host: a generous limit.
          p = new RateLimitedProvider(new StaticProvider({ cloud: def.name, home: this.home, properties: def.properties }), rateLimitFromProperties(def.name, def.properties, { ratePerSec: 1000, burst: 1000 }));
          break;
        case 'gcp':
          // Compute's default per-project API quotas are per minute (of the order of 1,500 read and
          // 1,500 mutation requests per minute per region, i.e. ~25/s; check IAM & Admin → Quotas):
          // 20 calls/s with a burst of 20 stays under them with room for other clients of the project.
          p = new RateLimitedProvider(new GcpProvider({ cloud: def.name, properties: def.properties }), rateLimitFromProperties(def.name, def.properties, { ratePerSec: 20, burst: 20 }));
          break;
        default:
          throw userError('cloud_type_unsupported', `cloud '${def.name}' has type '${def.type}', which this version of director cannot drive yet`, {
            hint: 'supported types: local, sim, static, aws, gcp',
          });
      }
      this.providers.set(cloud, p);
    }
    return p;
  }

  /** The director's directory on this cloud's VMs, relative to the SSH user's home unless absolute. */
  baseDir(cloud: string): string {
    const v = this.def(cloud).properties.base_dir;
    return typeof v === 'string' && v !== '' ? v : 'director';
  }

  async closeAll(): Promise<void> {
    await Promise.all([...this.providers.values()].map((p) => p.close()));
  }
}
