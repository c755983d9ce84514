/**
 * A rate limit per provider API, and throttling treated as back-pressure rather than failure.
 *
 * Clouds throttle a director that manages thousands of VMs (EC2 RequestLimitExceeded, GCE 429).
 * Spacing calls with a token bucket keeps us mostly under the cloud's limit; when it throttles
 * anyway, the call is retried with exponential backoff and full jitter (so a thousand waiting
 * calls do not return in lock-step and get throttled again), and only a call that stays throttled
 * through every retry becomes an error.
 */
import { DirectorError, isDirectorError, userError } from '../errors.js';
import type { InstanceConnector } from '../instance/driver.js';
import { systemClock, type Clock } from '../util/clock.js';
import type { Provider, Vm, VmRequest } from './provider.js';

export const THROTTLED = 'provider_throttled';

/** What an adapter throws when the cloud API said "slow down"; the wrapper retries it. */
export function throttledError(message: string): DirectorError {
  return new DirectorError(THROTTLED, 'infrastructure', message);
}

export function isThrottled(err: unknown): boolean {
  return isDirectorError(err) && err.code === THROTTLED;
}

export interface RateLimitOptions {
  /** sustained API calls per second */
  ratePerSec: number;
  /** calls that may go out at once after a quiet period */
  burst: number;
  /** retries of one throttled call before it fails (default 8) */
  maxRetries?: number;
  /** first backoff ceiling, doubled per retry (default 200 ms) */
  baseDelayMs?: number;
  /** backoff ceiling (default 10 s) */
  maxDelayMs?: number;
  clock?: Clock;
  /** in [0, 1); injectable so tests get reproducible jitter */
  random?: () => number;
}

export interface RateLimitStats {
  /** API calls asked of the wrapper (a retried call counts once) */
  calls: number;
  /** throttled answers received from the cloud */
  throttled: number;
  /** re-sent calls after a throttled answer */
  retries: number;
}

/**
 * Token bucket by reservation: each taker reserves the next token at once, going into debt when
 * the bucket is empty, and sleeps until its token is due. Concurrent takers are thus served in
 * arrival order with exact spacing, and none wake up just to find the token taken by another.
 */
export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(private readonly ratePerSec: number, private readonly burst: number, private readonly clock: Clock) {
    this.tokens = burst;
    this.last = clock.now();
  }

  /** ms to wait before the reserved token may be used; 0 when one is available now */
  reserve(): number {
    const now = this.clock.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) * this.ratePerSec) / 1000);
    this.last = now;
    this.tokens -= 1;
    return this.tokens >= 0 ? 0 : (-this.tokens * 1000) / this.ratePerSec;
  }

  async take(): Promise<void> {
    const wait = this.reserve();
    if (wait > 0) await this.clock.sleep(wait);
  }
}

export class RateLimitedProvider implements Provider {
  readonly cloud: string;
  readonly type: string;
  readonly stats: RateLimitStats = { calls: 0, throttled: 0, retries: 0 };
  private readonly bucket: TokenBucket;
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly maxRetries: number;
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;
  /**
   * Present exactly when the inner provider has it: callers test for the method itself to decide
   * between the provider's own connector and SSH.
   */
  readonly instances?: () => InstanceConnector | undefined;

  constructor(readonly inner: Provider, private readonly opts: RateLimitOptions) {
    if (!(opts.ratePerSec > 0) || !Number.isFinite(opts.ratePerSec)) throw new RangeError(`ratePerSec must be a positive number, got ${opts.ratePerSec}`);
    if (!(opts.burst >= 1) || !Number.isFinite(opts.burst)) throw new RangeError(`burst must be at least 1, got ${opts.burst}`);
    this.cloud = inner.cloud;
    this.type = inner.type;
    this.clock = opts.clock ?? systemClock;
    this.random = opts.random ?? Math.random;
    this.maxRetries = opts.maxRetries ?? 8;
    this.baseDelayMs = opts.baseDelayMs ?? 200;
    this.maxDelayMs = opts.maxDelayMs ?? 10_000;
    this.bucket = new TokenBucket(opts.ratePerSec, opts.burst, this.clock);
    if (inner.instances) this.instances = () => inner.instances?.();
  }

  create(req: VmRequest): Promise<Vm> {
    return this.call('create', () => this.inner.create(req));
  }

  list(tags: Record<string, string>): Promise<Vm[]> {
    return this.call('list', () => this.inner.list(tags));
  }

  delete(cid: string): Promise<void> {
    return this.call(`delete ${cid}`, () => this.inner.delete(cid));
  }

  exists(cid: string): Promise<boolean> {
    return this.call(`exists ${cid}`, () => this.inner.exists(cid));
  }

  setMetadata(cid: string, tags: Record<string, string>): Promise<void> {
    return this.call(`setMetadata ${cid}`, () => this.inner.setMetadata(cid, tags));
  }

  close(): Promise<void> {
    return this.inner.close();
  }


  private async call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    this.stats.calls++;
    let throttled = 0;
    for (let attempt = 0; ; attempt++) {
      // A retry is another API call, so it needs a token like any other.
      await this.bucket.take();
      try {
        return await fn();
      } catch (err) {
        if (!isThrottled(err)) throw err;
        this.stats.throttled++;
        throttled++;
        if (attempt >= this.maxRetries) {
          throw new DirectorError(
            THROTTLED,
            'infrastructure',
            `cloud '${this.cloud}': ${what} was throttled by the cloud API ${throttled} times in a row; gave up after ${this.maxRetries} retries`,
            {
              hint: `the cloud's API rate limit is below what the director sends; lower rate_limit for cloud '${this.cloud}' in the cloud-config (now ${this.opts.ratePerSec}/s, burst ${this.opts.burst}), lower max_in_flight, or retry later`,
              cause: err,
            },
          );
        }
        const ceiling = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** attempt);
        await this.clock.sleep(this.random() * ceiling);
        this.stats.retries++;
      }
    }
  }
}

/**
 * Reads `rate_limit` / `rate_limit_burst` from a cloud's properties. Burst defaults to the rate
 * when only the rate is given, so one second's worth of calls may go out at once.
 */
export function rateLimitFromProperties(
  cloud: string,
  properties: Record<string, unknown>,
  defaults: { ratePerSec: number; burst: number },
): { ratePerSec: number; burst: number } {
  const num = (key: string, ok: (v: number) => boolean, what: string): number | undefined => {
    const v = properties[key];
    if (v === undefined) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) {
      throw userError('cloud_property_invalid', `cloud '${cloud}': ${key} must be ${what}, got ${JSON.stringify(v)}`, {
        hint: 'rate_limit is API calls per second to this cloud; rate_limit_burst is how many may go out at once after a quiet period',
      });
    }
    return v;
  };
  const rate = num('rate_limit', (v) => v > 0, 'a positive number');
  const burst = num('rate_limit_burst', (v) => v >= 1, 'a number of at least 1');
  return { ratePerSec: rate ?? defaults.ratePerSec, burst: burst ?? (rate !== undefined ? Math.max(1, rate) : defaults.burst) };
}
