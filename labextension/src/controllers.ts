/**
 * What the views show and do, without the DOM: each controller is given the API (any
 * `IFednbApi`), holds a view's state, calls the API for the view's buttons and emits
 * `changed`; the views (views.ts, panels.ts) only render that state. Tested under jest
 * with the real `FednbApi` over a recording fetcher (test/controllers.spec.ts).
 */
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import {
  FednbApiError,
  IBudget,
  IDomainSummary,
  IRequestInfo,
  IResultReview,
  IRunInfo,
  ITemplateRow,
  ITemplatesOverview
} from './api';
import { FednbModel, IFednbApi } from './model';

/** An error as the view shows it: the server's message (never a token; the server holds those). */
export function message(e: unknown): string {
  return e instanceof FednbApiError || e instanceof Error ? e.message : String(e);
}

/** Which view, of which domain (and request): what the tracker saves and the open command takes. */
export interface IViewArgs {
  view: 'review' | 'held' | 'budget';
  domain: string;
  id?: string;
}

/** A stable key of a view's args: one view per key is open at a time. */
export function viewKey(args: IViewArgs): string {
  return [args.view, args.domain, args.id ?? ''].join(':');
}

/** State, a `changed` signal and disposal; a disposed controller ignores late answers. */
abstract class Controller implements IDisposable {
  constructor(
    protected readonly api: IFednbApi,
    readonly domain: IDomainSummary
  ) {}

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** The last action's outcome ("approved (manual release)", "refused: ..."), or ''. */
  get message(): string {
    return this._message;
  }

  /** Why the view could not be loaded, or ''. */
  get error(): string {
    return this._error;
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  dispose(): void {
    this._disposed = true;
    Signal.clearData(this);
  }

  protected emit(): void {
    if (!this._disposed) {
      this._changed.emit();
    }
  }

  protected _message = '';
  protected _error = '';
  private _disposed = false;
  private _changed = new Signal<this, void>(this);
}

/** One request under review; an owner approves (with a release mode) or denies (with a reason). */
export class ReviewController extends Controller {
  /** `decided` runs after an approve or deny (the plugin refreshes the sidebar). */
  constructor(
    api: IFednbApi,
    domain: IDomainSummary,
    readonly requestId: string,
    private readonly decided: () => void = () => undefined
  ) {
    super(api, domain);
  }

  get args(): IViewArgs {
    return { view: 'review', domain: this.domain.name, id: this.requestId };
  }

  get info(): IRequestInfo | null {
    return this._info;
  }

  get runs(): IRunInfo[] {
    return this._runs;
  }

  /** True when Approve and Deny apply: an owner, a pending request. */
  get canDecide(): boolean {
    return this.domain.role === 'owner' && this._info?.status === 'pending';
  }

  async load(): Promise<void> {
    try {
      const info = await this.api.request(this.domain.name, this.requestId);
      this._runs = await this.api.runs(this.domain.name, { requestId: this.requestId });
      this._info = info;
      this._error = '';
    } catch (e) {
      this._error = message(e);
    }
    this.emit();
  }

  approve(release: 'auto' | 'manual'): Promise<void> {
    return this.act(() => this.api.approve(this.domain.name, this.requestId, release), `approved (${release} release)`);
  }

  deny(reason: string): Promise<void> {
    return this.act(() => this.api.deny(this.domain.name, this.requestId, reason), 'denied');
  }

  private async act(fn: () => Promise<IRequestInfo>, done: string): Promise<void> {
    try {
      this._info = await fn();
      this._message = done;
    } catch (e) {
      this._message = `refused: ${message(e)}`;
    }
    this.emit();
    this.decided();
  }

  private _info: IRequestInfo | null = null;
  private _runs: IRunInfo[] = [];
}

/** Held results of one domain: pick one to read its review, then release or withhold it. */
export class HeldController extends Controller {
  constructor(
    api: IFednbApi,
    domain: IDomainSummary,
    private readonly decided: () => void = () => undefined
  ) {
    super(api, domain);
  }

  get args(): IViewArgs {
    return { view: 'held', domain: this.domain.name };
  }

  get runs(): IRunInfo[] {
    return this._runs;
  }

  get selected(): string | null {
    return this._selected;
  }

  /** The selected result's review, once read. */
  get review(): IResultReview | null {
    return this._review?.run.id === this._selected ? this._review : null;
  }

  get reviewError(): string {
    return this._reviewError;
  }

  async load(): Promise<void> {
    try {
      this._runs = await this.api.runs(this.domain.name, { releaseState: 'held' });
      this._error = '';
    } catch (e) {
      this._error = message(e);
    }
    this.emit();
  }

  /** Picks a held result and reads its review (values, metrics, the diff from the last release). */
  async select(runId: string): Promise<void> {
    this._selected = runId;
    this._reviewError = '';
    this.emit();
    try {
      const review = await this.api.review(this.domain.name, runId);
      if (this._selected === runId) {
        this._review = review;
      }
    } catch (e) {
      this._reviewError = `cannot read this result: ${message(e)}`;
    }
    this.emit();
  }

  release(runId?: string): Promise<void> {
    return this.act(runId, id => this.api.release(this.domain.name, id), 'released');
  }

  withhold(runId?: string): Promise<void> {
    return this.act(runId, id => this.api.withhold(this.domain.name, id), 'withheld');
  }

  private async act(runId: string | undefined, fn: (id: string) => Promise<IRunInfo>, done: string): Promise<void> {
    const id = runId ?? this._selected;
    if (!id) {
      this._message = 'select a held result first';
      this.emit();
      return;
    }
    try {
      await fn(id);
      this._message = `${done} run ${id}`;
      this._selected = null;
      this._review = null;
    } catch (e) {
      this._message = `refused: ${message(e)}`;
    }
    await this.load();
    this.decided();
  }

  private _review: IResultReview | null = null;
  private _reviewError = '';
  private _runs: IRunInfo[] = [];
  private _selected: string | null = null;
}

/** Epsilon spent per (scientist, dataset) on one domain. */
export class BudgetController extends Controller {
  get args(): IViewArgs {
    return { view: 'budget', domain: this.domain.name };
  }

  get rows(): IBudget[] {
    return this._rows;
  }

  /** True once the budgets were read (or failed to be). */
  get loaded(): boolean {
    return this._loaded;
  }

  async load(): Promise<void> {
    try {
      this._rows = await this.api.budget(this.domain.name);
      this._error = '';
    } catch (e) {
      this._error = message(e);
    }
    this._loaded = true;
    this.emit();
  }

  private _loaded = false;
  private _rows: IBudget[] = [];
}

/**
 * An owner's stats templates on one domain (the sidebar's Templates section): the
 * templates, the requests they approved and the disclosure refusals. Read when the section
 * opens and on every sidebar refresh while it is open; a second owner approves a template
 * waiting under the two-person rule.
 */
export class TemplatesController extends Controller {
  get overview(): ITemplatesOverview | null {
    return this._overview;
  }

  /** Whether the section is open: only an open section is read (and re-read on refresh). */
  get open(): boolean {
    return this._open;
  }

  /** Opens (and reads) or closes the section. */
  async setOpen(open: boolean): Promise<void> {
    this._open = open;
    if (open) {
      await this.load();
    }
  }

  /** True for a template waiting for its second owner, when we are an owner who has not approved it. */
  canApprove(t: ITemplateRow): boolean {
    const me = this.domain.user;
    return this.domain.role === 'owner' && !t.active && me !== null && !t.approved_by.includes(me);
  }

  async load(): Promise<void> {
    try {
      this._overview = await this.api.templates(this.domain.name);
      this._error = '';
    } catch (e) {
      this._error = message(e);
    }
    this.emit();
  }

  async approve(name: string): Promise<void> {
    try {
      const t = await this.api.approveTemplate(this.domain.name, name);
      this._message = `approved template ${t.name}: ${t.state}`;
    } catch (e) {
      this._message = `refused: ${message(e)}`;
    }
    await this.load();
  }

  private _open = false;
  private _overview: ITemplatesOverview | null = null;
}

/** One domain's block in the sidebar: its requests, or why they could not be read. */
export interface IDomainBlock {
  domain: IDomainSummary;
  requests: IRequestInfo[];
  error: string;
}

/**
 * The sidebar's lists: each time the model's domains change, the pending requests (owner)
 * or your requests (scientist) of each domain. An answer older than a newer read is dropped.
 */
export class RequestLists implements IDisposable {
  constructor(readonly model: FednbModel) {
    model.changed.connect(() => void this.load(), this);
  }

  get blocks(): IDomainBlock[] {
    return this._blocks;
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  async load(): Promise<void> {
    const seq = ++this._seq;
    const blocks = await Promise.all(this.model.domains.map(d => this.block(d)));
    if (seq !== this._seq || this._disposed) {
      return; // a newer read started meanwhile
    }
    this._blocks = blocks;
    this._changed.emit();
    const shown = new Set(blocks.filter(b => b.domain.role === 'owner' && !b.domain.error).map(b => b.domain.name));
    const open = [...this._templates.values()].filter(c => c.open && shown.has(c.domain.name));
    await Promise.all(open.map(c => c.load()));
  }

  /**
   * The Templates section's controller of an owner's domain: one per domain (a new one
   * when who we are there changed), re-read on each refresh while its section is open.
   */
  templates(domain: IDomainSummary): TemplatesController {
    const old = this._templates.get(domain.name);
    if (old && old.domain.user === domain.user && old.domain.role === domain.role) {
      return old;
    }
    old?.dispose();
    const c = new TemplatesController(this.model.api, domain);
    this._templates.set(domain.name, c);
    return c;
  }

  dispose(): void {
    this._disposed = true;
    this._templates.forEach(c => c.dispose());
    this._templates.clear();
    Signal.clearData(this);
  }

  private async block(domain: IDomainSummary): Promise<IDomainBlock> {
    if (domain.error) {
      return { domain, requests: [], error: domain.error };
    }
    try {
      const status = domain.role === 'owner' ? 'pending' : undefined;
      return { domain, requests: await this.model.api.requests(domain.name, status), error: '' };
    } catch (e) {
      return { domain, requests: [], error: message(e) };
    }
  }

  private _blocks: IDomainBlock[] = [];
  private _templates = new Map<string, TemplatesController>();
  private _disposed = false;
  private _seq = 0;
  private _changed = new Signal<this, void>(this);
}
