/** Observed state: what the director recorded, checked against what each cloud lists right now. */
import type { Observed } from '../plan/types.js';
import { TAG_DEPLOYMENT, TAG_DIRECTOR, type Vm } from '../providers/provider.js';
import type { ProviderSet } from '../providers/registry.js';
import type { DirectorContext } from './context.js';

export interface Observation {
  observed: Observed;
  /** VMs listed by a cloud, keyed `cloud/cid` */
  listed: Map<string, Vm>;
}

export async function observe(ctx: DirectorContext, providers: ProviderSet, deployment: string, extraClouds: string[] = []): Promise<Observation> {
  const rows = ctx.store.instances(deployment);
  const clouds = new Set([...rows.map((r) => r.cloud), ...extraClouds]);
  const listed = new Map<string, Vm>();
  // One filtered list call per cloud, not one call per VM.
  await Promise.all(
    [...clouds].map(async (cloud) => {
      const vms = await providers.get(cloud).list({ [TAG_DIRECTOR]: ctx.directorId, [TAG_DEPLOYMENT]: deployment });
      for (const vm of vms) listed.set(`${cloud}/${vm.cid}`, vm);
    }),
  );
  return {
    listed,
    observed: {
      deployment,
      instances: rows.map((r) => ({
        id: r.id,
        group: r.group,
        index: r.index,
        az: r.az,
        cloud: r.cloud,
        vmCid: r.vmCid,
        vmExists: r.vmCid !== null && listed.has(`${r.cloud}/${r.vmCid}`),
        state: r.state,
        applied: r.applied,
      })),
    },
  };
}
