/** One deployment may span clouds: each VM is reached the way its own cloud's provider says. */
import type { ProviderSet } from '../providers/registry.js';
import type { VmRow } from '../state/store.js';
import type { InstanceConnector, InstanceHandle, LogFn } from './driver.js';

export class RoutingConnector implements InstanceConnector {
  constructor(private readonly providers: ProviderSet, private readonly fallback: InstanceConnector) {}

  open(vm: VmRow, opts: { label: string; baseDir: string; log: LogFn }): Promise<InstanceHandle> {
    const own = this.providers.get(vm.cloud).instances?.();
    return (own ?? this.fallback).open(vm, opts);
  }
}
