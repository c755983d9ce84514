/** Reasons become sentences in one place, for plans, events and prompts alike. */
import type { InstancePlan, Reason } from './types.js';

export function describeReason(r: Reason): string {
  switch (r.code) {
    case 'new_instance': return 'new instance';
    case 'missing_vm': return 'VM is missing';
    case 'unfinished': return 'never finished an update';
    case 'failed': return 'last update failed';
    case 'release': return `release ${r.from} → ${r.to}`;
    case 'properties': return `properties changed: ${(r.keys ?? []).join(', ')}`;
    case 'jobs': return `jobs changed: ${(r.keys ?? []).join(', ')}`;
    case 'vm_type': return r.from === r.to ? `vm_type '${r.to}' cloud_properties changed` : `vm_type ${r.from} → ${r.to}`;
    case 'az': return `az ${r.from} → ${r.to}`;
    case 'scale_down': return 'instance count lowered';
    case 'removed_group': return 'instance group removed from the manifest';
    case 'deployment_deleted': return 'deployment deleted';
    case 'unresponsive_vm': return 'VM does not answer over SSH';
    case 'job_down': return `job down${r.keys?.length ? `: ${r.keys.join(', ')}` : ''}`;
    case 'config_drift': return `files changed on the VM: ${(r.keys ?? []).join(', ')}`;
  }
}

export function describeInstance(p: InstancePlan): string {
  return p.reasons.map(describeReason).join('; ');
}
