/**
 * The provider port (BOSH calls it a CPI). One small interface; each cloud is an adapter in its
 * own folder, and nothing outside src/providers/<name>/ imports a cloud SDK.
 *
 * Every VM is tagged so that `list` can find a deployment's VMs with one filtered call and
 * orphans are discoverable after a crash.
 */
import type { InstanceConnector } from '../instance/driver.js';

export const TAG_DIRECTOR = 'director';
export const TAG_DEPLOYMENT = 'deployment';
export const TAG_GROUP = 'instance_group';
export const TAG_INDEX = 'index';
export const TAG_INSTANCE_ID = 'instance_id';
export const TAG_CREATED_AT = 'created_at';

export interface VmRequest {
  /** tags/labels to attach (director, deployment, instance_group, index, instance_id, created_at) */
  tags: Record<string, string>;
  az: string;
  azCloudProperties: Record<string, unknown>;
  vmType: string;
  vmTypeCloudProperties: Record<string, unknown>;
  /** OpenSSH `ssh-ed25519 AAAA…` line the VM must accept for `sshUser` */
  authorizedKey: string;
}

export interface Vm {
  /** provider's id for the VM */
  cid: string;
  cloud: string;
  az: string;
  ips: string[];
  /** address and port the director reaches the VM's SSH on */
  sshHost: string;
  sshPort: number;
  sshUser: string;
  /** `SHA256:…` when the provider knows it out of band; otherwise pinned on first contact */
  hostKeyFingerprint?: string;
  tags: Record<string, string>;
  state: 'pending' | 'running' | 'stopped' | 'terminated' | 'unknown';
  /**
   * Where the director keeps its files on this VM, when the provider decides it per VM (static
   * hosts that share a user); otherwise the cloud's `base_dir`, default `director`.
   */
  baseDir?: string;
  createdAt: string;
}

export interface Provider {
  /** name of the cloud in the cloud-config */
  readonly cloud: string;
  readonly type: string;
  create(req: VmRequest): Promise<Vm>;
  /** the VMs carrying all of these tags, in as few API calls as the cloud allows */
  list(tags: Record<string, string>): Promise<Vm[]>;
  /** deletes the VM; deleting a VM that no longer exists succeeds */
  delete(cid: string): Promise<void>;
  exists(cid: string): Promise<boolean>;
  setMetadata(cid: string, tags: Record<string, string>): Promise<void>;
  /** releases what the adapter holds open (SDK clients, sockets) */
  close(): Promise<void>;
  /**
   * How to act on this cloud's instances, when not over SSH (the sim provider's VMs exist only in
   * memory). Undefined: the director reaches them over SSH.
   */
  instances?(): InstanceConnector | undefined;
}
