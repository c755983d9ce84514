/**
 * The embedded state store: SQLite under $DIRECTOR_HOME. WAL mode, so a reader (`director task
 * --follow` in another terminal) never blocks the deploy that writes; each progress write is its
 * own transaction, committed before the next step starts, so a killed director loses nothing
 * that it had reported.
 */
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

export type Db = Database.Database;

/** Append-only: a released migration is never edited, a change is a new entry. */
const MIGRATIONS: string[] = [
  `
  CREATE TABLE deployments (
    name TEXT PRIMARY KEY,
    manifest_file TEXT NOT NULL,
    cloud_config_file TEXT NOT NULL,
    clouds TEXT NOT NULL DEFAULT '[]',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
  );
  CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    deployment TEXT NOT NULL,
    grp TEXT NOT NULL,
    idx INTEGER NOT NULL,
    az TEXT NOT NULL,
    cloud TEXT NOT NULL,
    vm_cid TEXT,
    state TEXT NOT NULL,
    applied TEXT,
    previous TEXT,
    error TEXT,
    updated_at TEXT NOT NULL,
    UNIQUE (deployment, grp, idx)
  );
  CREATE TABLE vms (
    cloud TEXT NOT NULL,
    cid TEXT NOT NULL,
    deployment TEXT NOT NULL,
    instance_id TEXT,
    az TEXT NOT NULL,
    ips TEXT NOT NULL,
    ssh_host TEXT NOT NULL,
    ssh_port INTEGER NOT NULL,
    ssh_user TEXT NOT NULL,
    host_key TEXT,
    base_dir TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (cloud, cid)
  );
  CREATE TABLE tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    deployment TEXT,
    state TEXT NOT NULL,
    description TEXT NOT NULL,
    pid INTEGER,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    result TEXT,
    error TEXT
  );
  CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id INTEGER NOT NULL REFERENCES tasks(id),
    ts TEXT NOT NULL,
    stage TEXT NOT NULL,
    instance TEXT,
    state TEXT NOT NULL,
    message TEXT,
    data TEXT
  );
  CREATE INDEX events_task ON events (task_id, id);
  CREATE TABLE task_logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id INTEGER NOT NULL REFERENCES tasks(id),
    instance TEXT NOT NULL,
    ts TEXT NOT NULL,
    stream TEXT NOT NULL,
    line TEXT NOT NULL
  );
  CREATE INDEX task_logs_task ON task_logs (task_id, instance, id);
  CREATE TABLE locks (
    name TEXT PRIMARY KEY,
    task_id INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    acquired_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
  );
  `,
];

export function openDb(home: string): Db {
  mkdirSync(home, { recursive: true, mode: 0o700 });
  const db = new Database(join(home, 'state.db'));
  db.pragma('journal_mode = WAL');
  // NORMAL in WAL mode survives a killed process (only a power cut can lose the last commit).
  db.pragma('synchronous = NORMAL');
  db.pragma('busy_timeout = 10000');
  db.pragma('foreign_keys = ON');
  migrate(db);
  return db;
}

function migrate(db: Db): void {
  const current = db.pragma('user_version', { simple: true }) as number;
  for (let v = current; v < MIGRATIONS.length; v++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v]!);
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
}
