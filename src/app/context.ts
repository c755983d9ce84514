/**
 * Everything a command needs from $DIRECTOR_HOME: the state DB, the director's identity and key,
 * and the key that turns property values into digests. Opened once per command.
 */
import { createHmac, randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { ensureDirectorKey } from '../ssh/keys.js';
import { openDb, type Db } from '../state/db.js';
import { Store } from '../state/store.js';
import { Locks } from '../tasks/locks.js';
import { Tasks } from '../tasks/tasks.js';
import { canonicalJson } from '../util/canonical-json.js';
import { systemClock, type Clock } from '../util/clock.js';

export interface DirectorContext {
  home: string;
  db: Db;
  store: Store;
  tasks: Tasks;
  locks: Locks;
  clock: Clock;
  /** tag value that marks this director's VMs in every cloud */
  directorId: string;
  keys: { privateKey: string; publicKey: string; fingerprint: string };
  /** keyed digest: comparing property values without storing them (or a brute-forceable hash) */
  digest: (value: unknown) => string;
  close(): void;
}

export function directorHome(env = process.env): string {
  return resolve(env.DIRECTOR_HOME ?? '.director');
}

function readOrCreate(path: string, make: () => string): string {
  if (existsSync(path)) return readFileSync(path, 'utf8').trim();
  const value = make();
  writeFileSync(path, `${value}\n`, { mode: 0o600, flag: 'wx' });
  return value;
}

export function openContext(home = directorHome()): DirectorContext {
  mkdirSync(join(home, 'keys'), { recursive: true, mode: 0o700 });
  const db = openDb(home);
  const directorId = readOrCreate(join(home, 'director-id'), () => `director-${randomUUID().slice(0, 8)}`);
  const digestKey = Buffer.from(readOrCreate(join(home, 'keys', 'digest.key'), () => randomBytes(32).toString('hex')), 'hex');
  const keys = ensureDirectorKey(home);
  return {
    home,
    db,
    store: new Store(db),
    tasks: new Tasks(db),
    locks: new Locks(db),
    clock: systemClock,
    directorId,
    keys,
    digest: (value) => createHmac('sha256', digestKey).update(canonicalJson(value)).digest('hex').slice(0, 32),
    close: () => db.close(),
  };
}
