/**
 * The request layer: typed calls to fednb's jupyter_server extension (`/fednb/...`).
 *
 * The browser never sees a domain token: the server extension holds them. `Fetcher`
 * is injected so the layer is tested without a server (see test/api.spec.ts).
 */

export type Role = 'owner' | 'scientist';

export interface IDomainSummary {
  name: string;
  url: string;
  title: string;
  user: string | null;
  role: Role | null;
  pending: number;
  held: number;
  error: string | null;
}

export interface IParamSpec {
  type: 'float' | 'int' | 'bool' | 'str';
  low?: number | null;
  high?: number | null;
  choices?: string[] | null;
}

export interface IBudget {
  scientist: string;
  dataset: string;
  delta: number;
  epsilon_budget: number | null;
  epsilon_spent: number;
  epsilon_reserved: number;
  epsilon_remaining: number | null;
  dataset_cap: number | null;
  dataset_spent: number;
  dataset_remaining: number | null;
}

export interface IRequestInfo {
  id: string;
  scientist: string;
  function_name: string;
  kind: string;
  source: string;
  code_hash: string;
  datasets: string[];
  params: Record<string, IParamSpec>;
  weights: Record<string, { shape: number[]; dtype: string }> | null;
  metrics: Record<string, [number, number]>;
  runs: number;
  runs_used: number;
  description: string;
  status: 'pending' | 'approved' | 'denied';
  release: 'auto' | 'manual' | null;
  reviewed_by: string | null;
  review_reason: string | null;
  created: string;
  reviewed: string | null;
  previous_hash?: string | null;
  diff?: string | null;
  dp?: { clip: number; noise_multiplier: number } | null;
  delta?: number | null;
  epsilon_per_run?: number | null;
  projected_epsilon?: number | null;
  budget?: IBudget | null;
}

export interface IRunInfo {
  id: string;
  request_id: string;
  scientist: string;
  dataset: string;
  status: string;
  reason: string | null;
  params: Record<string, unknown>;
  num_examples: number | null;
  release_state: string | null;
  created: string;
  finished: string | null;
  epsilon?: number | null;
  owner_log?: string | null;
}

/** A JSON number of a review: non-finite values come as the strings NaN, Infinity, -Infinity. */
export type Num = number | string | boolean;
export type Nested = Num | Nested[];

export interface IHistogram {
  edges: Num[];
  counts: number[];
}

export interface ITensorReview {
  name: string;
  shape: number[];
  dtype: string;
  size: number;
  /** The values when the tensor holds at most 64, else null (see summary). */
  values: Nested | null;
  summary: {
    nan: number;
    inf: number;
    finite: number;
    min: Num | null;
    max: Num | null;
    mean: Num | null;
    std: Num | null;
    histogram: IHistogram | null;
  };
}

export interface ITensorDiff {
  name: string;
  status: 'same' | 'changed' | 'added' | 'removed' | 'reshaped';
  max_abs_diff: Num | null;
  changed: { index: number[]; before: Num; after: Num }[] | null;
  shapes?: [number[], number[]];
}

export interface IReviewRun {
  id: string;
  request_id: string;
  scientist: string;
  dataset: string;
  status: string;
  release_state: string | null;
  params: Record<string, unknown>;
  num_examples: number | null;
  epsilon: number | null;
  created: string;
  finished: string | null;
}

/** One released array's memorisation check (fednb.domain._nearest, owner only). */
export interface INearestTensor {
  name: string;
  checked: number;
  matches: number;
  rare_matches: number;
  variables: string[];
  examples: { index: number[]; value: Num; variable: string; holders: number }[];
  nearest: { index: number[]; value: Num; private: Num; variable: string; distance: Num } | null;
}

/** Released values equal to private values of the run's dataset, checked by the domain. */
export interface INearestReport {
  version: number;
  rtol: number;
  rare: number;
  skipped: string[];
  checked_variables: string[];
  warning: boolean;
  tensors: INearestTensor[];
}

/** A result as its owner reviews it before release (fednb.client._review). */
export interface IResultReview {
  version: number;
  run: IReviewRun;
  request: {
    id: string;
    function_name: string;
    kind: string;
    code_hash: string;
    source: string;
    release: string | null;
    datasets: string[];
    runs: number;
    runs_used: number;
    description: string;
  };
  tensors: ITensorReview[];
  metrics: Record<string, Num>;
  num_examples: number | null;
  previous: IReviewRun | null;
  diff: {
    tensors: ITensorDiff[];
    metrics: { name: string; before: Num | null; after: Num | null }[];
    num_examples: [number | null, number | null];
  } | null;
  /** The domain's memorisation check; absent or null where the domain does not offer it. */
  nearest?: INearestReport | null;
}

/** One stats template as the owner's tools show it (fednb.client.template_row, as text). */
export interface ITemplateRow {
  name: string;
  functions: string;
  datasets: string;
  scientists: string;
  limits: string;
  protection: string;
  /** Who approved it and how many must: "olivia (1/2)". */
  reviewers: string;
  /** "active", or "waiting for a second owner" (the two-person rule). */
  state: string;
  active: boolean;
  approved_by: string[];
  /** Owners who must approve it before it is active: 1, or 2 (the two-person rule). */
  needed: number;
}

/** A request a template approved with no owner action. */
export interface ITemplateApproved {
  request: string;
  scientist: string;
  function: string;
  datasets: string;
  /** Runs used of runs allowed: "1/3". */
  runs: string;
  template: string;
}

/** A stats call the domain's disclosure control refused (from its audit log). */
export interface IDisclosureRefusal {
  time: string;
  scientist: string;
  request: string;
  dataset: string;
  /** The rule and its message, as the domain logged it. */
  refusal: string;
}

/** A domain's stats templates, the requests they approved and the disclosure refusals, newest first. */
export interface ITemplatesOverview {
  templates: ITemplateRow[];
  approved: ITemplateApproved[];
  refusals: IDisclosureRefusal[];
}

/** An error the server extension (or the domain behind it) answered. */
export class FednbApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string
  ) {
    super(message);
    this.name = 'FednbApiError';
  }
}

export interface IFetchResult {
  status: number;
  json(): Promise<unknown>;
}

/** Sends one request to the Jupyter server; `path` is relative to `<base_url>fednb/`. */
export type Fetcher = (path: string, init: { method: 'GET' | 'POST'; body?: string }) => Promise<IFetchResult>;

const ID = /^[A-Za-z0-9_-]{8,64}$/;
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const TEMPLATE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,47}$/;

function checkName(name: string): string {
  if (!NAME.test(name)) {
    throw new FednbApiError(400, 'invalid_input', `not a domain name: ${name.slice(0, 64)}`);
  }
  return encodeURIComponent(name);
}

function checkId(id: string): string {
  if (!ID.test(id)) {
    throw new FednbApiError(400, 'invalid_input', `not an id: ${id.slice(0, 64)}`);
  }
  return id;
}

function checkTemplate(name: string): string {
  if (!TEMPLATE.test(name)) {
    throw new FednbApiError(400, 'invalid_input', `not a template name: ${name.slice(0, 48)}`);
  }
  return encodeURIComponent(name);
}

export class FednbApi {
  constructor(private readonly fetcher: Fetcher) {}

  private async call<T>(path: string, method: 'GET' | 'POST' = 'GET', body?: unknown): Promise<T> {
    const res = await this.fetcher(path, {
      method,
      body: body === undefined ? undefined : JSON.stringify(body)
    });
    let data: unknown = null;
    try {
      data = await res.json();
    } catch {
      data = null;
    }
    if (res.status >= 400) {
      const err = (data as { error?: { code?: string; message?: string } } | null)?.error;
      throw new FednbApiError(res.status, err?.code ?? 'http_error', err?.message ?? `HTTP ${res.status}`);
    }
    return data as T;
  }

  domains(): Promise<IDomainSummary[]> {
    return this.call('domains');
  }

  requests(domain: string, status?: 'pending' | 'approved' | 'denied'): Promise<IRequestInfo[]> {
    const q = status ? `?status=${status}` : '';
    return this.call(`domains/${checkName(domain)}/requests${q}`);
  }

  request(domain: string, id: string): Promise<IRequestInfo> {
    return this.call(`domains/${checkName(domain)}/requests/${checkId(id)}`);
  }

  approve(domain: string, id: string, release: 'auto' | 'manual'): Promise<IRequestInfo> {
    return this.call(`domains/${checkName(domain)}/requests/${checkId(id)}/approve`, 'POST', { release });
  }

  deny(domain: string, id: string, reason: string): Promise<IRequestInfo> {
    if (!reason.trim()) {
      return Promise.reject(new FednbApiError(400, 'invalid_input', 'give a reason to deny (the scientist sees it)'));
    }
    return this.call(`domains/${checkName(domain)}/requests/${checkId(id)}/deny`, 'POST', {
      reason: reason.trim()
    });
  }

  runs(domain: string, opts: { releaseState?: string; requestId?: string } = {}): Promise<IRunInfo[]> {
    const q = new URLSearchParams();
    if (opts.releaseState) {
      q.set('release_state', opts.releaseState);
    }
    if (opts.requestId) {
      q.set('request_id', checkId(opts.requestId));
    }
    const s = q.toString();
    return this.call(`domains/${checkName(domain)}/runs${s ? '?' + s : ''}`);
  }

  release(domain: string, runId: string): Promise<IRunInfo> {
    return this.call(`domains/${checkName(domain)}/runs/${checkId(runId)}/release`, 'POST');
  }

  withhold(domain: string, runId: string): Promise<IRunInfo> {
    return this.call(`domains/${checkName(domain)}/runs/${checkId(runId)}/withhold`, 'POST');
  }

  /** A held (or released) result's review: values, metrics, parameters, the diff from the last release. */
  review(domain: string, runId: string): Promise<IResultReview> {
    return this.call(`domains/${checkName(domain)}/runs/${checkId(runId)}/review`);
  }

  budget(domain: string): Promise<IBudget[]> {
    return this.call(`domains/${checkName(domain)}/budget`);
  }

  /** (Owner) the stats templates, the requests they approved and the disclosure refusals. */
  templates(domain: string): Promise<ITemplatesOverview> {
    return this.call(`domains/${checkName(domain)}/templates`);
  }

  /** (Owner) approve a two-reviewer template as its second owner, which makes it active. */
  approveTemplate(domain: string, name: string): Promise<ITemplateRow> {
    return this.call(`domains/${checkName(domain)}/templates/${checkTemplate(name)}/approve`, 'POST');
  }
}
