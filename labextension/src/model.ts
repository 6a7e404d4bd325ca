/**
 * The sidebar's model: the configured domains and their pending/held counts, polled by
 * JupyterLab's own `Poll` (@lumino/polling: back-off on failure, standby while the page
 * is hidden), and the pure helpers the views use (facts of a request, diff lines).
 * No DOM and no JupyterLab application here, so it is tested under jest (test/model.spec.ts).
 */
import { IDisposable } from '@lumino/disposable';
import { IPoll, Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { FednbApi, IBudget, IDomainSummary, IRequestInfo } from './api';

/** The API as the models and controllers use it: `FednbApi`, or anything answering alike. */
export type IFednbApi = Pick<FednbApi, keyof FednbApi>;

export interface IPollOptions {
  /** Milliseconds between polls while the server answers. */
  interval: number;
  /** The longest wait after repeated failures. */
  maxInterval: number;
  /** How much the wait may grow after each failure (Poll randomises within it); 2 by default. */
  backoff?: number;
  /** When the poll stands by: 'when-hidden' (the default) skips ticks while the page is hidden. */
  standby?: Poll.Standby;
}

function frequency(o: IPollOptions): IPoll.Frequency {
  return { interval: o.interval, max: Math.max(o.interval, o.maxInterval), backoff: o.backoff ?? 2 };
}

export class FednbModel implements IDisposable {
  constructor(
    readonly api: IFednbApi,
    options: IPollOptions = { interval: 10_000, maxInterval: 300_000 }
  ) {
    this._poll = new Poll<IDomainSummary[], unknown>({
      auto: false,
      factory: () => this._read(),
      frequency: frequency(options),
      name: 'fednb:domains',
      standby: options.standby ?? 'when-hidden'
    });
    // Poll's constructor lifts `max` to at least its default (30 s); the setter keeps ours.
    this._poll.frequency = frequency(options);
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

  /** The poll behind `start()`: its `state` says the phase and the wait before the next tick. */
  get poll(): Poll<IDomainSummary[], unknown> {
    return this._poll;
  }

  get changed(): ISignal<FednbModel, void> {
    return this._changed;
  }

  get isDisposed(): boolean {
    return this._poll.isDisposed;
  }

  /**
   * Reads the domains now; on failure keeps the last list. While polling, this is the
   * poll's own refresh (it restarts the schedule); resolves true when the read succeeded.
   */
  async refresh(): Promise<boolean> {
    const phase = this._poll.state.phase;
    if (phase === 'constructed' || phase === 'stopped' || phase === 'disposed') {
      return this._read().then(
        () => true,
        () => false
      );
    }
    await this._poll.refresh();
    await this._poll.tick.catch(() => undefined);
    return this._error === null;
  }

  /** The domain of this name, reading the domains first when they were never read. */
  async domain(name: string): Promise<IDomainSummary> {
    let d = this._domains.find(x => x.name === name);
    if (!d) {
      await this.refresh();
      d = this._domains.find(x => x.name === name);
    }
    if (!d) {
      throw new Error(`no domain ${name} is configured: add it to c.FednbLab.tokens_file (see fednb docs/lab.md)`);
    }
    return d;
  }

  /** Polls until `stop()` or `dispose()`: now, then every `interval` (backing off on failure). */
  start(): void {
    void this._poll.start();
  }

  stop(): void {
    void this._poll.stop();
  }

  configure(options: IPollOptions): void {
    this._poll.frequency = frequency(options);
  }

  /** Stops the poll for good and disconnects every listener. */
  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._poll.dispose();
    Signal.clearData(this);
  }

  /** The poll's factory: it rejects on failure, which is what makes the poll back off. */
  private async _read(): Promise<IDomainSummary[]> {
    try {
      this._domains = await this.api.domains();
      this._error = null;
      return this._domains;
    } catch (e) {
      this._error = e instanceof Error ? e.message : String(e);
      throw e;
    } finally {
      if (!this.isDisposed) {
        this._changed.emit();
      }
    }
  }

  private _domains: IDomainSummary[] = [];
  private _filter: string[] = [];
  private _error: string | null = null;
  private _poll: Poll<IDomainSummary[], unknown>;
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
