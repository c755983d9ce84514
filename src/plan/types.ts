/**
 * The Plan is the one value that `director plan`, `deploy --dry-run`, the confirm prompt and the
 * executor all share. It is plain JSON: what would happen to every instance, why, and in which
 * wave. It never contains a property value, only property names, so a plan can be printed,
 * saved or attached to a ticket without leaking a secret.
 */
import type { Count, WatchTime } from '../manifest/types.js';

export type Action = 'none' | 'create' | 'update' | 'restart' | 'recreate' | 'delete';

export type ReasonCode =
  | 'new_instance' // the group grew, or the deployment is new
  | 'missing_vm' // recorded, but the cloud no longer has the VM
  | 'unfinished' // a VM exists but nothing was ever applied to it successfully
  | 'failed' // the last update of this instance failed
  | 'release' // a job's release version changed
  | 'properties' // job properties changed (keys listed)
  | 'jobs' // jobs were added to or removed from the group
  | 'vm_type' // the VM type or its cloud properties changed
  | 'az' // the instance's AZ left the group's list, or its AZ moved to another cloud
  | 'scale_down' // the group shrank
  | 'removed_group' // the instance group left the manifest
  | 'deployment_deleted' // director delete-deployment
  | 'unresponsive_vm' // repair: the VM exists but SSH does not answer
  | 'job_down' // repair: a job is not running or fails its health check
  | 'config_drift'; // repair: files on the VM differ from what the director applied (keys: paths)

export interface Reason {
  code: ReasonCode;
  /** property names (properties), job names (jobs, release) */
  keys?: string[];
  from?: string;
  to?: string;
}

/** What a job on an instance runs: compared between desired and applied to find changes. */
export interface JobState {
  name: string;
  release: string;
  /** content hash of the release */
  version: string;
  /** property name → keyed digest of its value; values themselves are never stored */
  propertyDigests: Record<string, string>;
}

/** What was applied to an instance the last time an update of it succeeded. */
export interface AppliedSpec {
  az: string;
  cloud: string;
  vmType: string;
  vmTypeDigest: string;
  jobs: JobState[];
  /** id of the generation on the VM; a rollback activates the previous one again */
  generation?: string;
}

export interface ResolvedUpdate {
  /** resolved against the group's size by the planner (see resolveCount) */
  canaries: Count;
  maxInFlight: Count;
  canaryWatch: WatchTime;
  updateWatch: WatchTime;
  serial: boolean;
  vmStrategy: 'delete-create' | 'create-swap-delete';
  autoRollback: boolean;
  maxFailures: number;
  progressDeadlineMs?: number;
}

export interface DesiredGroup {
  name: string;
  instances: number;
  /** in manifest order; `cloud` is the cloud each AZ maps to in the cloud-config */
  azs: { name: string; cloud: string }[];
  vmType: string;
  vmTypeDigest: string;
  jobs: JobState[];
  health: string[];
  update: ResolvedUpdate;
}

export interface Desired {
  deployment: string;
  groups: DesiredGroup[];
}

export type InstanceState = 'creating' | 'updating' | 'running' | 'failed' | 'stopped' | 'deleting';

export interface ObservedInstance {
  id: string;
  group: string;
  index: number;
  az: string;
  cloud: string;
  vmCid: string | null;
  /** the provider listed the VM just now */
  vmExists: boolean;
  state: InstanceState;
  applied: AppliedSpec | null;
}

/** A VM the director recorded for this deployment that no instance points at any more. */
export interface StrayVm {
  cloud: string;
  cid: string;
  /** the instance it was made for, when known (e.g. the new VM of an interrupted swap) */
  instance: string | null;
}

export interface Observed {
  deployment: string;
  instances: ObservedInstance[];
  /** left behind by an interrupted run (a crash mid create-swap-delete); deleted before the rollout */
  strayVms?: StrayVm[];
}

export interface InstancePlan {
  /** `web/3` */
  instance: string;
  group: string;
  index: number;
  /** null for an instance that does not exist yet: the executor assigns its id */
  id: string | null;
  az: string;
  cloud: string;
  action: Action;
  reasons: Reason[];
  canary: boolean;
  /** 0 is the canary wave, then one wave per max_in_flight instances; null when nothing happens */
  wave: number | null;
  vmCid: string | null;
}

export interface GroupPlan {
  name: string;
  canaries: number;
  maxInFlight: number;
  /** instances to roll, canaries first, in the order the executor starts them */
  order: string[];
  /** order cut into waves: [canaries, then max_in_flight at a time] */
  waves: string[][];
  canaryWatch: WatchTime;
  updateWatch: WatchTime;
}

export interface Plan {
  version: 1;
  deployment: string;
  /** nothing to do: the executor exits early and says so */
  noop: boolean;
  /** every instance that exists or will exist, plus the ones to delete */
  instances: InstancePlan[];
  /** VMs no instance points at (an interrupted swap): deleted first */
  strayVms: StrayVm[];
  groups: GroupPlan[];
  summary: Record<Action, number>;
  /** digest of the observed state the plan was made from; a plan made from stale state is refused */
  observedFingerprint: string;
  /** per wave: the median time one instance took in this deployment's past tasks, else watch times plus an allowance */
  etaMs: number;
  /** what etaMs is based on */
  etaBasis: 'history' | 'watch_times';
}
