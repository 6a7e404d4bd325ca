/**
 * The sidebar's model: the configured domains and their pending/held counts, polled
 * with back-off, and the pure helpers the views use (facts of a request, diff lines).
 * No DOM and no JupyterLab here, so it is tested under jest (test/model.spec.ts).
 */
import { ISignal, Signal } from '@lumino/signaling';

import { FednbApi, IBudget, IDomainSummary, IRequestInfo } from './api';

export interface IClock {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const realClock: IClock = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: h => clearTimeout(h as ReturnType<typeof setTimeout>)
};

export interface IPollOptions {
  /** Milliseconds between polls while the server answers. */
  interval: number;
  /** The longest wait after repeated failures (the wait doubles up to it). */
  maxInterval: number;
  clock?: IClock;
}

export class FednbModel {
  constructor(
    readonly api: FednbApi,
    private options: IPollOptions = { interval: 10_000, maxInterval: 300_000 }
  ) {
    this._clock = options.clock ?? realClock;
    this._delay = options.interval;
  }

  /** The configured domains the settings' `domains` filter lets through (all by default). */
  get domains(): IDomainSummary[] {
    return this._filter.length ? this._domains.filter(d => this._filter.includes(d.name)) : this._domains;
  }

  /** Show only these domains (by name); empty shows all. */
  set filter(names: string[]) {
    this._filter = [...names];
    this._changed.emit();
  }

  /** The last refresh's failure, or null. */
  get error(): string | null {
    return this._error;
  }

  /** Pending requests over every domain (what the status bar shows). */
  get pendingTotal(): number {
    return this.domains.reduce((n, d) => n + d.pending, 0);
  }

  get heldTotal(): number {
    return this.domains.reduce((n, d) => n + d.held, 0);
  }

  /** The wait before the next poll, in milliseconds. */
  get delay(): number {
    return this._delay;
  }

  get changed(): ISignal<FednbModel, void> {
    return this._changed;
  }

  /** Reads the domains once; on failure keeps the last list and backs off. */
  async refresh(): Promise<boolean> {
    try {
      this._domains = await this.api.domains();
      this._error = null;
      this._delay = this.options.interval;
      this._changed.emit();
      return true;
    } catch (e) {
      this._error = e instanceof Error ? e.message : String(e);
      this._delay = Math.min(this._delay * 2, this.options.maxInterval);
      this._changed.emit();
      return false;
    }
  }

  /** Polls until `stop()`: immediately, then every `interval` (backing off on failure). */
  start(): void {
    if (this._running) {
      return;
    }
    this._running = true;
    void this._tick();
  }

  stop(): void {
    this._running = false;
    if (this._timer !== null) {
      this._clock.clearTimeout(this._timer);
      this._timer = null;
    }
  }

  configure(options: Partial<IPollOptions>): void {
    this.options = { ...this.options, ...options };
    this._delay = this.options.interval;
  }

  private async _tick(): Promise<void> {
    if (!this._running) {
      return;
    }
    await this.refresh();
    if (this._running) {
      this._timer = this._clock.setTimeout(() => void this._tick(), this._delay);
    }
  }

  private _clock: IClock;
  private _delay: number;
  private _domains: IDomainSummary[] = [];
  private _filter: string[] = [];
  private _error: string | null = null;
  private _running = false;
  private _timer: unknown = null;
  private _changed = new Signal<FednbModel, void>(this);
}

export function formatEpsilon(v: number | null | undefined): string {
  return v === null || v === undefined ? '—' : Number(v.toPrecision(4)).toString();
}

/** The facts a reviewer reads, as (label, text) pairs; the view puts them in as text. */
export function requestFacts(r: IRequestInfo): [string, string][] {
  const facts: [string, string][] = [
    ['request', r.id],
    ['requester', r.scientist],
    ['function', `${r.function_name} (${r.kind})`],
    ['datasets', r.datasets.join(', ')],
    ['status', r.status],
    ['runs', `${r.runs_used} used of ${r.runs}`],
    ['code hash (SHA-256)', r.code_hash],
    ['previous approved hash', r.previous_hash ?? 'none: first version']
  ];
  if (r.description) {
    facts.push(['description', r.description]);
  }
  if (r.review_reason) {
    facts.push(['review reason', r.review_reason]);
  }
  if (r.dp) {
    facts.push(['client-level DP', `clip ${r.dp.clip}, noise multiplier ${r.dp.noise_multiplier}`]);
  } else if (r.kind === 'update') {
    facts.push(['client-level DP', 'none: every result held for manual release']);
  }
  if (r.epsilon_per_run !== null && r.epsilon_per_run !== undefined) {
    facts.push(['ε per run', formatEpsilon(r.epsilon_per_run) + (r.delta ? ` (δ ${r.delta.toExponential(1)})` : '')]);
  }
  if (r.projected_epsilon !== null && r.projected_epsilon !== undefined) {
    facts.push(['projected ε (all runs)', formatEpsilon(r.projected_epsilon)]);
  }
  if (r.budget) {
    facts.push(['budget left', budgetLine(r.budget)]);
    facts.push([
      'dataset budget left',
      r.budget.dataset_cap === null
        ? `no cap (${formatEpsilon(r.budget.dataset_spent)} spent)`
        : `${formatEpsilon(r.budget.dataset_remaining)} of ${formatEpsilon(r.budget.dataset_cap)}`
    ]);
  }
  return facts;
}

export function budgetLine(b: IBudget): string {
  const reserved = b.epsilon_reserved ? `, ${formatEpsilon(b.epsilon_reserved)} reserved` : '';
  if (b.epsilon_budget === null) {
    return `${formatEpsilon(b.epsilon_spent)} spent${reserved}, no cap`;
  }
  return `${formatEpsilon(b.epsilon_remaining)} of ${formatEpsilon(b.epsilon_budget)} left (${formatEpsilon(
    b.epsilon_spent
  )} spent${reserved})`;
}

/** The fraction of a budget spent or reserved, in [0, 1]; 0 without a cap. */
export function budgetFraction(b: IBudget): number {
  if (b.epsilon_budget === null || b.epsilon_budget <= 0) {
    return 0;
  }
  return Math.min(1, (b.epsilon_spent + b.epsilon_reserved) / b.epsilon_budget);
}

export type DiffKind = 'add' | 'del' | 'hunk' | 'meta' | 'context';

/** A unified diff as lines with a kind each (the view colours them, as text). */
export function diffLines(diff: string): { text: string; kind: DiffKind }[] {
  return diff
    .split('\n')
    .filter((line, i, all) => !(i === all.length - 1 && line === ''))
    .map(text => {
      let kind: DiffKind = 'context';
      if (text.startsWith('+++') || text.startsWith('---')) {
        kind = 'meta';
      } else if (text.startsWith('@@')) {
        kind = 'hunk';
      } else if (text.startsWith('+')) {
        kind = 'add';
      } else if (text.startsWith('-')) {
        kind = 'del';
      }
      return { text, kind };
    });
}

/** Who we are on a domain: "olivia (owner)", or just "owner" when the name is the role. */
export function signedIn(d: IDomainSummary): string {
  if (!d.user) {
    return 'not connected';
  }
  return d.user === d.role || !d.role ? d.user : `${d.user} (${d.role})`;
}

/** The status bar's text. */
export function statusText(model: FednbModel): string {
  if (model.error && model.domains.length === 0) {
    return 'fednb: offline';
  }
  const held = model.heldTotal ? `, ${model.heldTotal} held` : '';
  return `fednb: ${model.pendingTotal} pending${held}`;
}
