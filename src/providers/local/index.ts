/**
 * Provider adapter for the embedded local cloud: VMs are loopback addresses hosted by the
 * local-cloud supervisor of the director home (started on first use, shared by later runs).
 */
import { isDirectorError } from '../../errors.js';
import { LocalCloudClient, type LocalVmRecord } from '../../local-cloud/client.js';
import type { Provider, Vm, VmRequest } from '../provider.js';

export const TAG_AZ = 'az';

export interface LocalProviderOptions {
  /** name of the cloud in the cloud-config */
  cloud: string;
  /** the director home; the supervisor keeps its state under `<home>/local-cloud/` */
  home: string;
}

export class LocalProvider implements Provider {
  readonly cloud: string;
  readonly type = 'local';
  private readonly home: string;
  private client: Promise<LocalCloudClient> | null = null;

  constructor(opts: LocalProviderOptions) {
    this.cloud = opts.cloud;
    this.home = opts.home;
  }

  async create(req: VmRequest): Promise<Vm> {
    const tags = { ...req.tags, [TAG_AZ]: req.az };
    const record = await this.withClient((c) => c.createVm({ tags, authorizedKeys: [req.authorizedKey] }));
    return this.toVm(record);
  }

  async list(tags: Record<string, string>): Promise<Vm[]> {
    const records = await this.withClient((c) => c.listVms(tags));
    return records.map((r) => this.toVm(r));
  }

  async delete(cid: string): Promise<void> {
    await this.withClient((c) => c.deleteVm(cid));
  }

  async exists(cid: string): Promise<boolean> {
    return (await this.withClient((c) => c.getVm(cid))) !== null;
  }

  async setMetadata(cid: string, tags: Record<string, string>): Promise<void> {
    await this.withClient((c) => c.setTags(cid, tags));
  }

  /** Nothing to release: each call is its own HTTP request, and the supervisor keeps running. */
  async close(): Promise<void> {
    this.client = null;
  }

  /**
   * A supervisor restarted since our ensure() listens on a new port: when the old one refuses the
   * connection (so the request never ran), reconnect once and retry.
   */
  private async withClient<T>(fn: (c: LocalCloudClient) => Promise<T>): Promise<T> {
    try {
      return await fn(await this.cloudClient());
    } catch (err) {
      const cause = isDirectorError(err) ? (err.cause as NodeJS.ErrnoException | undefined) : undefined;
      if (!(isDirectorError(err) && err.code === 'local_cloud_unavailable' && cause?.code === 'ECONNREFUSED')) throw err;
      this.client = null;
      return fn(await this.cloudClient());
    }
  }

  private cloudClient(): Promise<LocalCloudClient> {
    // One ensure() per provider; a failed start is retried on the next call rather than cached.
    this.client ??= LocalCloudClient.ensure(this.home).catch((err: unknown) => {
      this.client = null;
      throw err;
    });
    return this.client;
  }

  private toVm(r: LocalVmRecord): Vm {
    return {
      cid: r.cid,
      cloud: this.cloud,
      az: r.tags[TAG_AZ] ?? '',
      ips: [r.ip],
      sshHost: r.ip,
      sshPort: r.ssh_port,
      sshUser: r.ssh_user,
      hostKeyFingerprint: r.host_key_fingerprint,
      tags: r.tags,
      state: r.state === 'running' ? 'running' : 'stopped',
      createdAt: r.created_at,
    };
  }
}
