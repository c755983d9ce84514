/** One deployment may span clouds: each VM is reached the way its own cloud's provider says. */
import type { ProviderSet } from '../providers/registry.js';
import { Ssh2Connector } from '../ssh/connection.js';
import type { SshConnector } from '../ssh/types.js';
import type { VmRow } from '../state/store.js';
import { SshInstanceConnector } from './agent.js';
import type { InstanceConnector, InstanceHandle, LogFn } from './driver.js';

export class RoutingConnector implements InstanceConnector {
  constructor(private readonly providers: ProviderSet, private readonly fallback: InstanceConnector) {}

  open(vm: VmRow, opts: { label: string; baseDir: string; log: LogFn }): Promise<InstanceHandle> {
    const own = this.providers.get(vm.cloud).instances?.();
    return (own ?? this.fallback).open(vm, opts);
  }
}

/** The director's usual connector: each cloud's own, else SSH with the director's key. */
export function instanceConnector(providers: ProviderSet, privateKey: string, ssh: SshConnector = new Ssh2Connector()): InstanceConnector {
  return new RoutingConnector(providers, new SshInstanceConnector(ssh, privateKey));
}
