/**
 * Turns a loaded manifest + cloud-config + releases into the Desired value the planner compares
 * with what runs. Property values are reduced to keyed digests here, so nothing downstream (plan,
 * state, events) can carry a secret by accident.
 */
import { userError } from '../errors.js';
import type { LoadedDeployment, UpdatePolicy } from '../manifest/types.js';
import { effectiveProperties } from '../release/render.js';
import type { Release } from '../release/release.js';
import type { Desired, DesiredGroup, JobState, ResolvedUpdate } from './types.js';

export type Digest = (value: unknown) => string;

export function resolveDesired(loaded: LoadedDeployment, releases: Map<string, Release>, digest: Digest): Desired {
  const { manifest, cloudConfig } = loaded;
  const groups: DesiredGroup[] = manifest.instanceGroups.map((ig) => {
    const azs = ig.azs.map((name) => {
      const az = cloudConfig.azs.find((a) => a.name === name);
      if (!az) throw userError('az_unknown', `instance group '${ig.name}' uses AZ '${name}', which the cloud-config does not define`);
      return { name, cloud: az.cloud };
    });
    const vmType = cloudConfig.vmTypes.find((v) => v.name === ig.vmType);
    if (!vmType) throw userError('vm_type_unknown', `instance group '${ig.name}' uses vm_type '${ig.vmType}', which the cloud-config does not define`);
    const jobs: JobState[] = ig.jobs.map((ref) => {
      const release = releases.get(ref.release);
      if (!release) throw userError('release_unknown', `job '${ref.name}' of instance group '${ig.name}' names release '${ref.release}', which the manifest does not list`);
      const job = release.jobs.get(ref.name);
      if (!job) {
        throw userError('job_unknown', `release '${release.name}' has no job '${ref.name}' (instance group '${ig.name}')`, {
          hint: `jobs in ${release.name}: ${[...release.jobs.keys()].join(', ')}`,
        });
      }
      const props = effectiveProperties(job, ref.properties, `instance group '${ig.name}'`);
      const propertyDigests: Record<string, string> = {};
      for (const [k, v] of Object.entries(props)) propertyDigests[k] = digest(v);
      return { name: ref.name, release: release.name, version: release.version, propertyDigests };
    });
    return {
      name: ig.name,
      instances: ig.instances,
      azs,
      vmType: ig.vmType,
      vmTypeDigest: digest(vmType.cloudProperties),
      jobs,
      health: ig.health,
      update: resolveUpdate(ig.update),
    };
  });
  return { deployment: manifest.name, groups };
}

function resolveUpdate(u: UpdatePolicy): ResolvedUpdate {
  return {
    canaries: u.canaries,
    maxInFlight: u.maxInFlight,
    canaryWatch: u.canaryWatchTime,
    updateWatch: u.updateWatchTime,
    serial: u.serial,
    vmStrategy: u.vmStrategy,
    autoRollback: u.autoRollback,
    maxFailures: u.maxFailures,
    progressDeadlineMs: u.progressDeadlineMs,
  };
}
