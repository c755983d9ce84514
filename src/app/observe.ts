/** Observed state: what the director recorded, checked against what each cloud lists right now. */
import type { Observed } from '../plan/types.js';
import { TAG_DEPLOYMENT, TAG_DIRECTOR, TAG_INSTANCE_ID, type Vm } from '../providers/provider.js';
import type { ProviderSet } from '../providers/registry.js';
import type { DirectorContext } from './context.js';

export interface Observation {
  observed: Observed;
  /** VMs listed by a cloud, keyed `cloud/cid` */
  listed: Map<string, Vm>;
}

export async function observe(ctx: DirectorContext, providers: ProviderSet, deployment: string, extraClouds: string[] = []): Promise<Observation> {
  const clouds = new Set([...ctx.store.instances(deployment).map((r) => r.cloud), ...extraClouds]);
  const listed = new Map<string, Vm>();
  // One filtered list call per cloud, not one call per VM.
  await Promise.all(
    [...clouds].map(async (cloud) => {
      const vms = await providers.get(cloud).list({ [TAG_DIRECTOR]: ctx.directorId, [TAG_DEPLOYMENT]: deployment });
      for (const vm of vms) listed.set(`${cloud}/${vm.cid}`, vm);
    }),
  );
  adoptUnrecorded(ctx, deployment, listed);
  const rows = ctx.store.instances(deployment);
  const byId = new Map(rows.map((r) => [r.id, r]));
  const strayVms = ctx.store
    .vms(deployment)
    .filter((vm) => !vm.instanceId || byId.get(vm.instanceId)?.vmCid !== vm.cid)
    .map((vm) => {
      const owner = vm.instanceId ? byId.get(vm.instanceId) : undefined;
      return { cloud: vm.cloud, cid: vm.cid, instance: owner ? `${owner.group}/${owner.index}` : null };
    });
  return {
    listed,
    observed: {
      deployment,
      strayVms,
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

/**
 * A director killed between "the cloud created the VM" and "the VM was recorded" leaves a VM
 * that only its tags know about. The instance row is written before the create call, so the
 * VM's instance_id tag finds its owner: record it, and the next plan re-applies it instead of
 * creating a second VM (nothing leaked, nothing duplicated).
 */
function adoptUnrecorded(ctx: DirectorContext, deployment: string, listed: Map<string, Vm>): void {
  for (const row of ctx.store.instances(deployment)) {
    if (row.vmCid !== null) continue;
    const vm = [...listed.entries()].find(([key, v]) => key.startsWith(`${row.cloud}/`) && v.tags[TAG_INSTANCE_ID] === row.id)?.[1];
    if (!vm) continue;
    ctx.db.transaction(() => {
      ctx.store.recordVm({
        cloud: row.cloud, cid: vm.cid, deployment, instanceId: row.id, az: vm.az, ips: vm.ips,
        sshHost: vm.sshHost, sshPort: vm.sshPort, sshUser: vm.sshUser, hostKey: vm.hostKeyFingerprint ?? null, baseDir: vm.baseDir ?? null, createdAt: vm.createdAt,
      });
      ctx.store.updateInstance(row.id, { vmCid: vm.cid });
    })();
  }
}
