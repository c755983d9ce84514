/**
 * Provider adapter for Google Compute Engine, through `@google-cloud/compute` (REST transport).
 *
 * VMs are instances named `d-<deployment>-<group>-<index>-<short id>`, labelled with the director's
 * tags (see labels.ts for the label rules and the reversible value encoding); the cid is
 * `<zone>/<name>`. The director's SSH key goes into the instance metadata `ssh-keys`, which the
 * guest environment of Google's images turns into a user; the host key is pinned on first contact.
 */
// @google-cloud/compute is pinned at 6.x (package.json ^6): 7.x declares Node >= 22 and the
// director supports (and its CI machines run) Node 20. Move to 7.x together with `engines`.
// The SDK is loaded on first use (about 1.8 s of startup here): CLI runs that touch no gcp cloud
// do not pay for it. Only types are imported statically.
import type { InstancesClient, ZoneOperationsClient, protos } from '@google-cloud/compute';
// The copy compute's google-gax uses (npm ls google-auth-library shows one, 10.x).
import type { AuthClient } from 'google-auth-library';
import { DirectorError, infraError, isDirectorError, userError } from '../../errors.js';
import type { Provider, Vm, VmRequest } from '../provider.js';
import { throttledError } from '../throttle.js';
import { parseGcpProperties, parseVmType, zoneOf, type GcpConfig } from './config.js';
import { fromLabels, instanceName, LABEL_SSH_PORT, labelFilter, requestIdFor, toLabels } from './labels.js';

type IInstance = protos.google.cloud.compute.v1.IInstance;
type IOperation = protos.google.cloud.compute.v1.IOperation;

export interface GcpProviderOptions {
  cloud: string;
  properties: Record<string, unknown>;
  /**
   * The auth client the SDK uses. Default: Application Default Credentials, except for a plain
   * `http://` api_endpoint, which gets a PassThroughClient (no credentials at all): plain HTTP is
   * only for local fakes and emulators, and sending a real access token over it would leak it.
   * Tests may pass their own.
   */
  authClient?: AuthClient;
  /** how long one operation may take before create/delete give up (default 10 min) */
  operationTimeoutMs?: number;
}

const ADC_HINT =
  'the director uses Application Default Credentials: run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a service account key file; the account needs roles/compute.instanceAdmin.v1 (and roles/iam.serviceAccountUser to attach a service account) on the project';

const THROTTLE_REASONS = new Set(['rateLimitExceeded', 'userRateLimitExceeded', 'RATE_LIMIT_EXCEEDED']);

interface ApiError {
  status?: number;
  reason?: string;
  message: string;
}

/** The HTTP status and GCE reason of an SDK error (a GaxiosError whose message is the JSON body). */
export function parseApiError(err: unknown): ApiError {
  const e = err as { code?: unknown; status?: unknown; message?: unknown; response?: { status?: number } };
  const rawStatus = typeof e.status === 'number' ? e.status : typeof e.code === 'number' ? e.code : e.response?.status;
  const text = typeof e.message === 'string' ? e.message : String(err);
  let reason: string | undefined;
  let message = text;
  try {
    const body = JSON.parse(text) as { error?: { message?: string; errors?: { reason?: string; message?: string }[]; status?: string } };
    reason = body.error?.errors?.[0]?.reason ?? body.error?.status;
    message = body.error?.message ?? body.error?.errors?.[0]?.message ?? text;
  } catch {
    // not a JSON body (network error, auth library error)
  }
  return { status: rawStatus, reason, message };
}

export class GcpProvider implements Provider {
  readonly cloud: string;
  readonly type = 'gcp';
  readonly config: GcpConfig;
  private sdk: Promise<{ compute: InstancesClient; operations: ZoneOperationsClient }> | null = null;
  private readonly authClient?: AuthClient;
  private readonly operationTimeoutMs: number;

  constructor(opts: GcpProviderOptions) {
    this.cloud = opts.cloud;
    this.config = parseGcpProperties(opts.cloud, opts.properties);
    this.operationTimeoutMs = opts.operationTimeoutMs ?? 600_000;
    this.authClient = opts.authClient;
  }

  private clients(): Promise<{ compute: InstancesClient; operations: ZoneOperationsClient }> {
    this.sdk ??= (async () => {
      const { InstancesClient, ZoneOperationsClient } = await import('@google-cloud/compute');
      const ep = this.config.endpoint;
      const { GoogleAuth, PassThroughClient } = await import('google-auth-library');
      // Credentials are resolved here, before any client exists: a gax client left to find them
      // itself rejects one promise per API method when there are none, and crashes the process.
      let authClient = this.authClient ?? (ep?.protocol === 'http' ? new PassThroughClient() : undefined);
      if (!authClient) {
        try {
          authClient = (await new GoogleAuth({ scopes: ['https://www.googleapis.com/auth/cloud-platform'] }).getClient()) as AuthClient;
        } catch (err) {
          throw this.mapError(err, 'loading Application Default Credentials');
        }
      }
      // Each client gets its own options object: the constructors mutate it. `port` must be separate
      // (apiEndpoint 'host:port' still goes to 443) and `protocol: 'http'` turns TLS off.
      const clientOptions = () => ({
        ...(ep ? { apiEndpoint: ep.host, port: ep.port, protocol: ep.protocol } : {}),
        authClient,
      });
      return { compute: new InstancesClient(clientOptions()), operations: new ZoneOperationsClient(clientOptions()) };
    })().catch((err: unknown) => {
      this.sdk = null; // retried on the next call (e.g. after `gcloud auth application-default login`)
      throw err;
    });
    return this.sdk;
  }

  async create(req: VmRequest): Promise<Vm> {
    const zone = zoneOf(this.cloud, req.az, req.azCloudProperties);
    const vt = parseVmType(this.cloud, req.vmType, req.vmTypeCloudProperties);
    // The AZ rides along as a label so that listed VMs report the director's AZ name, not the zone.
    const labels = { ...vt.labels, ...toLabels(this.cloud, { ...req.tags, az: req.az }) };
    const name = instanceName(req.tags);
    const keyLine = req.authorizedKey.trim();
    if (!/^ssh-[a-z0-9-]+ [A-Za-z0-9+/=]+/.test(keyLine)) throw infraError('gcp_bad_key', `cloud '${this.cloud}': the director's public key is not an OpenSSH key line`);
    const { project, network, subnetwork, useExternalIp, sshUser } = this.config;
    const instanceResource: IInstance = {
      name,
      machineType: `zones/${zone}/machineTypes/${vt.machineType}`,
      labels,
      tags: vt.networkTags.length ? { items: vt.networkTags } : undefined,
      metadata: { items: [{ key: 'ssh-keys', value: `${sshUser}:${keyLine}` }] },
      disks: [{ boot: true, autoDelete: true, initializeParams: { sourceImage: vt.image, diskSizeGb: String(vt.diskGb) } }],
      networkInterfaces: [
        {
          network,
          ...(subnetwork ? { subnetwork } : {}),
          ...(useExternalIp ? { accessConfigs: [{ name: 'External NAT', type: 'ONE_TO_ONE_NAT' }] } : {}),
        },
      ],
      serviceAccounts: vt.serviceAccount ? [{ email: vt.serviceAccount, scopes: ['https://www.googleapis.com/auth/cloud-platform'] }] : undefined,
    };
    // Same VM, same requestId: a create retried after throttling (or a lost answer) is recognised
    // by Compute instead of making a second instance.
    const requestId = requestIdFor(project, zone, name);
    let op: IOperation | undefined;
    try {
      const [lro] = await (await this.clients()).compute.insert({ project, zone, instanceResource, requestId });
      op = lro.latestResponse as IOperation;
    } catch (err) {
      const api = parseApiError(err);
      // A retry after a lost answer whose insert went through under another requestId: take the VM.
      if (api.status !== 409) throw this.mapError(err, `creating instance ${zone}/${name}`);
    }
    if (op) await this.waitOperation(zone, op, `creating instance ${zone}/${name}`);
    const inst = await this.get(zone, name);
    if (!inst) throw infraError('gcp_create_failed', `cloud '${this.cloud}': instance ${zone}/${name} is gone right after its creation finished`);
    return this.toVm(zone, inst, req.az);
  }

  async list(tags: Record<string, string>): Promise<Vm[]> {
    const filter = labelFilter(this.cloud, tags);
    const { project } = this.config;
    const out: Vm[] = [];
    try {
      if (this.config.zones.length > 0) {
        for (const zone of this.config.zones) {
          for await (const inst of (await this.clients()).compute.listAsync({ project, zone, filter, maxResults: 500 }, { autoPaginate: false })) out.push(this.toVm(zone, inst));
        }
      } else {
        // One paged call over every zone: the provider need not know the cloud's AZs.
        for await (const [scope, scoped] of (await this.clients()).compute.aggregatedListAsync({ project, filter, maxResults: 500, returnPartialSuccess: true }, { autoPaginate: false })) {
          const zone = scope.replace(/^zones\//, '');
          for (const inst of scoped.instances ?? []) out.push(this.toVm(zone, inst));
        }
      }
    } catch (err) {
      throw this.mapError(err, 'listing instances');
    }
    return out.sort((a, b) => a.cid.localeCompare(b.cid));
  }

  async delete(cid: string): Promise<void> {
    const { zone, name } = this.parseCid(cid);
    let op: IOperation;
    try {
      const [lro] = await (await this.clients()).compute.delete({ project: this.config.project, zone, instance: name, requestId: requestIdFor('delete', this.config.project, cid) });
      op = lro.latestResponse as IOperation;
    } catch (err) {
      if (parseApiError(err).status === 404) return;
      throw this.mapError(err, `deleting instance ${cid}`);
    }
    await this.waitOperation(zone, op, `deleting instance ${cid}`, true);
  }

  async exists(cid: string): Promise<boolean> {
    const { zone, name } = this.parseCid(cid);
    return (await this.get(zone, name)) !== null;
  }

  async setMetadata(cid: string, tags: Record<string, string>): Promise<void> {
    const { zone, name } = this.parseCid(cid);
    const add = toLabels(this.cloud, tags);
    for (let attempt = 0; ; attempt++) {
      const inst = await this.get(zone, name);
      if (!inst) throw infraError('gcp_instance_missing', `cloud '${this.cloud}': instance ${cid} does not exist`);
      try {
        const [lro] = await (await this.clients()).compute.setLabels({
          project: this.config.project,
          zone,
          instance: name,
          instancesSetLabelsRequestResource: { labels: { ...(inst.labels ?? {}), ...add }, labelFingerprint: inst.labelFingerprint ?? '' },
        });
        await this.waitOperation(zone, lro.latestResponse as IOperation, `labelling instance ${cid}`);
        return;
      } catch (err) {
        // 412: someone changed the labels since our read; read again and retry once.
        if (attempt === 0 && !isDirectorError(err) && parseApiError(err).status === 412) continue;
        throw isDirectorError(err) ? err : this.mapError(err, `labelling instance ${cid}`);
      }
    }
  }

  async close(): Promise<void> {
    if (!this.sdk) return;
    const { compute, operations } = await this.sdk;
    this.sdk = null;
    // close() awaits the client's stub, which rejects when credentials never loaded: nothing to release then.
    await Promise.all([compute.close().catch(() => undefined), operations.close().catch(() => undefined)]);
  }

  private async get(zone: string, name: string): Promise<IInstance | null> {
    try {
      const [inst] = await (await this.clients()).compute.get({ project: this.config.project, zone, instance: name });
      return inst;
    } catch (err) {
      if (parseApiError(err).status === 404) return null;
      throw this.mapError(err, `reading instance ${zone}/${name}`);
    }
  }

  /** Waits until the zone operation is DONE (each wait call returns after at most ~2 min), then checks its error. */
  private async waitOperation(zone: string, op: IOperation, what: string, notFoundOk = false): Promise<void> {
    const deadline = Date.now() + this.operationTimeoutMs;
    let cur = op;
    while (cur.status !== 'DONE') {
      if (Date.now() > deadline) throw infraError('gcp_operation_timeout', `cloud '${this.cloud}': ${what}: operation ${op.name} did not finish within ${Math.round(this.operationTimeoutMs / 1000)} s`);
      try {
        [cur] = await (await this.clients()).operations.wait({ project: this.config.project, zone, operation: String(op.name) });
      } catch (err) {
        throw this.mapError(err, `${what} (waiting for operation ${op.name})`);
      }
    }
    const errors = cur.error?.errors ?? [];
    if (errors.length === 0) return;
    const first = errors[0]!;
    const code = first.code ?? 'UNKNOWN';
    if (notFoundOk && (code === 'RESOURCE_NOT_FOUND' || cur.httpErrorStatusCode === 404)) return;
    const detail = errors.map((e) => `${e.code}: ${e.message}`).join('; ');
    if (code === 'QUOTA_EXCEEDED') {
      throw infraError('gcp_quota_exceeded', `cloud '${this.cloud}': ${what} failed: QUOTA_EXCEEDED (${first.message})`, {
        hint: `raise the quota on the Google Cloud console (IAM & Admin → Quotas) for project ${this.config.project}, use a smaller machine_type, or deploy fewer instances`,
      });
    }
    if (code === 'ZONE_RESOURCE_POOL_EXHAUSTED' || code === 'ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS') {
      throw infraError('gcp_zone_exhausted', `cloud '${this.cloud}': ${what} failed: ${code} — zone ${zone} has no capacity for this machine type right now (${first.message})`, {
        hint: 'retry later, or put the instance group in another AZ/zone or on another machine_type',
      });
    }
    if (cur.httpErrorStatusCode === 429 || THROTTLE_REASONS.has(code)) throw throttledError(`cloud '${this.cloud}': ${what}: ${detail}`);
    if (cur.httpErrorStatusCode === 400 || cur.httpErrorStatusCode === 404) {
      throw userError('gcp_request_invalid', `cloud '${this.cloud}': ${what} failed: ${detail}`, { hint: 'check the vm_type cloud_properties (machine_type, image, service_account) and the cloud\'s network/subnetwork' });
    }
    throw infraError('gcp_operation_failed', `cloud '${this.cloud}': ${what} failed: ${detail}`);
  }

  /** Throttling → throttledError (retried by RateLimitedProvider); auth → user error with the ADC hint. */
  private mapError(err: unknown, what: string): DirectorError {
    if (isDirectorError(err)) return err;
    const api = parseApiError(err);
    if (api.status === 429 || (api.status === 403 && api.reason && THROTTLE_REASONS.has(api.reason))) {
      return throttledError(`cloud '${this.cloud}': ${what}: throttled (${api.status} ${api.reason ?? ''})`.trim());
    }
    const noCreds = /Could not load the default credentials|Unable to detect a Project Id|invalid_grant|invalid_client/i.test(api.message);
    if (noCreds && api.status === undefined) {
      return userError('gcp_auth_failed', `cloud '${this.cloud}': ${what}: no Google Cloud credentials found (${api.message})`, { hint: ADC_HINT, cause: err });
    }
    if (api.status === 401 || api.status === 403 || noCreds) {
      return userError('gcp_auth_failed', `cloud '${this.cloud}': ${what}: Google Cloud refused the credentials (${api.status ?? 'auth'}${api.reason ? ` ${api.reason}` : ''}): ${api.message}`, {
        hint: ADC_HINT,
        cause: err,
      });
    }
    if (api.status === 400) return userError('gcp_request_invalid', `cloud '${this.cloud}': ${what}: ${api.message}`, { hint: 'check the gcp cloud properties and the vm_type cloud_properties', cause: err });
    return infraError('gcp_api_error', `cloud '${this.cloud}': ${what}: ${api.status ? `HTTP ${api.status} ` : ''}${api.reason ? `${api.reason}: ` : ''}${api.message}`, { cause: err });
  }

  private parseCid(cid: string): { zone: string; name: string } {
    const m = /^([a-z0-9-]+)\/([a-z][-a-z0-9]*)$/.exec(cid);
    if (!m) throw userError('gcp_cid_invalid', `cloud '${this.cloud}': '${cid}' is not a gcp VM id (zone/name)`);
    return { zone: m[1]!, name: m[2]! };
  }

  private toVm(zone: string, inst: IInstance, az?: string): Vm {
    const nic = inst.networkInterfaces?.[0];
    const internal = nic?.networkIP ?? '';
    const external = nic?.accessConfigs?.find((a) => a.natIP)?.natIP ?? undefined;
    const host = this.config.useExternalIp && external ? external : internal;
    const tags = fromLabels(inst.labels as Record<string, string> | undefined);
    // Test affordance: the wire-level fake runs instances on local VMs whose SSH is not on 22.
    const port = Number(inst.labels?.[LABEL_SSH_PORT] ?? 22);
    const status = inst.status ?? '';
    const state: Vm['state'] =
      status === 'RUNNING' ? 'running' : status === 'PROVISIONING' || status === 'STAGING' ? 'pending' : status === 'STOPPED' || status === 'SUSPENDED' || status === 'STOPPING' || status === 'SUSPENDING' ? 'stopped' : status === 'TERMINATED' ? 'stopped' : 'unknown';
    return {
      cid: `${zone}/${inst.name}`,
      cloud: this.cloud,
      az: az ?? tags.az ?? zone,
      ips: [internal, ...(external ? [external] : [])].filter(Boolean),
      sshHost: host,
      sshPort: Number.isInteger(port) && port > 0 ? port : 22,
      sshUser: this.config.sshUser,
      tags,
      state,
      createdAt: tags.created_at ?? inst.creationTimestamp ?? new Date().toISOString(),
    };
  }
}
