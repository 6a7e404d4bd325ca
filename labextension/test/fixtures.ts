/**
 * Shared test data and a scripted server: the real `FednbApi` over a fetcher that answers
 * by method and path and records every call, as fednb's server extension would see it.
 */
import { FednbApi, IBudget, IDomainSummary, IRequestInfo, IResultReview, IRunInfo } from '../src/api';

export const REQ = 'req1req1req1';
export const RUN = 'run2run2run2';

export function domain(over: Partial<IDomainSummary> = {}): IDomainSummary {
  return {
    name: 'st-mary',
    url: 'http://127.0.0.1:9/st-mary',
    title: 'St Mary',
    user: 'olivia',
    role: 'owner',
    pending: 1,
    held: 1,
    error: null,
    ...over
  };
}

export function budget(over: Partial<IBudget> = {}): IBudget {
  return {
    scientist: 'alice',
    dataset: 'breast-cancer',
    delta: 1e-6,
    epsilon_budget: 10,
    epsilon_spent: 2.5,
    epsilon_reserved: 0.5,
    epsilon_remaining: 7,
    dataset_cap: null,
    dataset_spent: 2.5,
    dataset_remaining: null,
    ...over
  };
}

export function request(over: Partial<IRequestInfo> = {}): IRequestInfo {
  return {
    id: REQ,
    scientist: 'alice',
    function_name: 'train',
    kind: 'update',
    source: 'def train(data):\n    return 1',
    code_hash: 'f'.repeat(64),
    datasets: ['breast-cancer'],
    params: { lr: { type: 'float', low: 0, high: 1 } },
    weights: { w: { shape: [4], dtype: 'float64' } },
    metrics: { loss: [0, 100] },
    runs: 2,
    runs_used: 0,
    description: '<b>not bold</b>',
    status: 'pending',
    release: null,
    reviewed_by: null,
    review_reason: null,
    created: '',
    reviewed: null,
    dp: { clip: 1, noise_multiplier: 2 },
    delta: 1e-6,
    epsilon_per_run: 1.2,
    projected_epsilon: 2.4,
    budget: null,
    ...over
  };
}

export function run(over: Partial<IRunInfo> = {}): IRunInfo {
  return {
    id: RUN,
    request_id: REQ,
    scientist: 'alice',
    dataset: 'breast-cancer',
    status: 'succeeded',
    reason: null,
    params: { col: 1 },
    num_examples: 569,
    release_state: 'held',
    created: '2024-01-01T00:00:00',
    finished: '2024-01-01T00:01:00',
    epsilon: null,
    owner_log: 'started\nfinished',
    ...over
  };
}

export function review(): IResultReview {
  const r = run();
  const reviewRun = { ...r, epsilon: null };
  delete (reviewRun as Partial<IRunInfo>).owner_log;
  delete (reviewRun as Partial<IRunInfo>).reason;
  return {
    version: 1,
    run: reviewRun,
    request: {
      id: REQ,
      function_name: 'train',
      kind: 'update',
      code_hash: 'ab'.repeat(32),
      source: 'def f(): ...',
      release: 'manual',
      datasets: ['breast-cancer'],
      runs: 2,
      runs_used: 1,
      description: ''
    },
    tensors: [
      {
        name: 'first',
        shape: [2],
        dtype: 'float64',
        size: 2,
        values: [0.5, 1.5],
        summary: { nan: 0, inf: 0, finite: 2, min: 0.5, max: 1.5, mean: 1, std: 0.5, histogram: null }
      }
    ],
    metrics: { mean: 1 },
    num_examples: 569,
    previous: null,
    diff: null
  };
}

export interface ICall {
  method: string;
  path: string;
  body: unknown;
}

/** One scripted answer: a status and a body, or an error the server extension sends. */
export type Answer = { status?: number; body: unknown } | { status: number; error: string };

/**
 * A `FednbApi` whose fetcher answers `"METHOD path"` from `routes` (404 otherwise) and
 * records the calls. A route may be a function, called once per request.
 */
export function server(routes: Record<string, Answer | (() => Answer)>): { api: FednbApi; calls: ICall[] } {
  const calls: ICall[] = [];
  const api = new FednbApi(async (path, init) => {
    calls.push({ method: init.method, path, body: init.body === undefined ? undefined : JSON.parse(init.body) });
    const route = routes[`${init.method} ${path}`];
    const answer = typeof route === 'function' ? route() : route;
    if (!answer) {
      return { status: 404, json: async () => ({ error: { code: 'not_found', message: `no route ${path}` } }) };
    }
    if ('error' in answer) {
      return { status: answer.status, json: async () => ({ error: { code: 'refused', message: answer.error } }) };
    }
    return { status: answer.status ?? 200, json: async () => answer.body };
  });
  return { api, calls };
}

/** Lets every answer already given (promise callbacks) run: the scripted server answers at once. */
export function settle(): Promise<void> {
  return new Promise(resolve => setTimeout(resolve, 0));
}

/** A button (or any element) of a view, by CSS selector; fails the test when it is absent. */
export function find<T extends Element = HTMLElement>(root: Element, selector: string): T {
  const found = root.querySelector<T>(selector);
  if (!found) {
    throw new Error(`no ${selector} in the view`);
  }
  return found;
}
