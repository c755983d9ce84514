/**
 * The validated, var-substituted shapes the rest of the director works with. The YAML schemas
 * (src/manifest/schema.ts) accept BOSH's spellings (snake_case, "25%", "1000-30000") and
 * normalise into these camelCase values, so nothing past the loader re-parses strings.
 */

/** An absolute count or a percentage of the instance group (BOSH's `canaries: 2`, `max_in_flight: 25%`). */
export type Count = { kind: 'abs'; value: number } | { kind: 'pct'; value: number };

export interface WatchTime {
  minMs: number;
  maxMs: number;
}

export interface UpdatePolicy {
  canaries: Count;
  maxInFlight: Count;
  canaryWatchTime: WatchTime;
  updateWatchTime: WatchTime;
  serial: boolean;
  vmStrategy: 'delete-create' | 'create-swap-delete';
  autoRollback: boolean;
  maxFailures: number;
  /** ms without progress before the rollout fails; undefined: no deadline */
  progressDeadlineMs?: number;
}

export interface ManifestRelease {
  name: string;
  /** absolute path of the release directory (resolved relative to the manifest file) */
  path: string;
  /** the version as written in the manifest (`621.740` keeps its trailing zero); undefined: not given */
  version?: string;
}

export interface JobRef {
  name: string;
  release: string;
  properties: Record<string, unknown>;
}

export interface InstanceGroup {
  name: string;
  instances: number;
  azs: string[];
  vmType: string;
  jobs: JobRef[];
  /** names of health checks defined under canaries/ */
  health: string[];
  /** the deployment's update block with this group's overrides applied key by key */
  update: UpdatePolicy;
}

export interface Manifest {
  name: string;
  releases: ManifestRelease[];
  update: UpdatePolicy;
  instanceGroups: InstanceGroup[];
  /** repair's meltdown guard: no automatic repair when this many instances are down at once */
  repair: { meltdownMinInstances: number; meltdownMinPercent: number };
}

export interface AzConfig {
  name: string;
  /** name of an entry of `clouds` */
  cloud: string;
  cloudProperties: Record<string, unknown>;
}

export interface CloudDef {
  name: string;
  /** provider type: local | aws | gcp | static | sim */
  type: string;
  /** everything else the user wrote for this cloud, passed to the provider as is */
  properties: Record<string, unknown>;
}

export interface VmType {
  name: string;
  cloudProperties: Record<string, unknown>;
}

export interface CloudConfig {
  azs: AzConfig[];
  clouds: CloudDef[];
  vmTypes: VmType[];
}

/** One `((name))` substitution that was made, so output can be redacted back to `((name))`. */
export interface UsedVar {
  name: string;
  value: unknown;
}

export interface LoadedDeployment {
  manifest: Manifest;
  cloudConfig: CloudConfig;
  manifestFile: string;
  cloudConfigFile: string;
  /** every var that was substituted into the manifest or cloud-config */
  vars: UsedVar[];
  /**
   * `file:line: ...` messages about things accepted but ignored (BOSH keys not supported yet).
   * Show them to the operator; they do not stop a deploy.
   */
  warnings?: string[];
}

/** A health check definition from canaries/<name>.yml. */
export type HealthCheckDef =
  | {
      name: string;
      type: 'http';
      /** literal port, or the name of a job property holding it (e.g. `port`) */
      port: number | { property: string };
      path: string;
      expectStatus: number;
      timeoutMs: number;
    }
  | { name: string; type: 'tcp'; port: number | { property: string }; timeoutMs: number }
  | { name: string; type: 'command'; command: string; timeoutMs: number };

/** releases/<name>/release.yml */
export interface ReleaseSpec {
  name: string;
  jobs: string[];
}

/** releases/<name>/jobs/<job>/spec.yml */
export interface JobSpec {
  name: string;
  /** template source (relative to the job's templates/) → destination (relative to the job's dir on the VM) */
  templates: Record<string, string>;
  properties: Record<string, { description?: string; default?: unknown }>;
}
