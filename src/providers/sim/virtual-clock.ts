/**
 * A Clock whose time moves only when everything in flight is waiting on it: each time the process
 * has run out of ready work (one setImmediate turn after the last microtask), it jumps to the
 * earliest pending sleep and wakes it. A 1000-instance rollout with minutes of simulated latency
 * and watch times then runs in the milliseconds its logic costs, and timings are exact and
 * repeatable, so tests and benchmarks can assert on them.
 *
 * Caveat: real asynchronous I/O (fs.promises, sockets) does not hold virtual time back; while it
 * is in flight, sleeps may fire as if it took no virtual time to start but forever to finish.
 * Use it with code whose waits all go through the clock (the sim provider and instance handles,
 * the rollout engine, better-sqlite3 which is synchronous).
 */
import type { Clock } from '../../util/clock.js';

interface Timer {
  at: number;
  seq: number;
  resolve: () => void;
}

export class VirtualClock implements Clock {
  private t: number;
  private timers: Timer[] = [];
  private seq = 0;
  private armed = false;

  constructor(start = 0) {
    this.t = start;
  }

  now(): number {
    return this.t;
  }

  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const wait = Number.isFinite(ms) && ms > 0 ? ms : 0;
      this.timers.push({ at: this.t + wait, seq: this.seq++, resolve });
      this.arm();
    });
  }

  /** sleeps not yet woken */
  get pending(): number {
    return this.timers.length;
  }

  private arm(): void {
    if (this.armed) return;
    this.armed = true;
    setImmediate(() => {
      this.armed = false;
      this.fire();
    });
  }

  private fire(): void {
    if (this.timers.length === 0) return;
    // Stable by (due time, order of sleep), so equal deadlines wake in the order they slept.
    this.timers.sort((a, b) => a.at - b.at || a.seq - b.seq);
    this.t = Math.max(this.t, this.timers[0]!.at);
    let n = 0;
    while (n < this.timers.length && this.timers[n]!.at <= this.t) n++;
    const due = this.timers.splice(0, n);
    for (const timer of due) timer.resolve();
    if (this.timers.length > 0) this.arm();
  }
}
