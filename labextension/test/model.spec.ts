import { FednbApi, IBudget, IDomainSummary } from '../src/api';
import { budgetFraction, budgetLine, diffLines, FednbModel, requestFacts, statusText } from '../src/model';
import { budget as fixtureBudget, request as fixtureRequest } from './fixtures';

function domain(name: string, pending: number, held = 0): IDomainSummary {
  return {
    name,
    url: `http://127.0.0.1/${name}`,
    title: name,
    user: 'olivia',
    role: 'owner',
    pending,
    held,
    error: null
  };
}

/** A real FednbApi over a fetcher answering /fednb/domains from a script, counting the calls. */
function apiAnswering(answers: (IDomainSummary[] | Error)[]): { api: FednbApi; calls: () => number } {
  let calls = 0;
  const api = new FednbApi(async path => {
    expect(path).toBe('domains');
    calls++;
    const a = answers.length > 1 ? answers.shift() : answers[0];
    if (a instanceof Error || a === undefined) {
      return {
        status: 502,
        json: async () => ({ error: { code: 'unreachable', message: a?.message ?? 'no answer' } })
      };
    }
    return { status: 200, json: async () => a };
  });
  return { api, calls: () => calls };
}

/** Runs the timers due within `ms` and the promise callbacks they start. */
async function advance(ms: number): Promise<void> {
  await jest.advanceTimersByTimeAsync(ms);
}

describe('FednbModel', () => {
  afterEach(() => jest.useRealTimers());

  it('sums pending and held over the domains for the status bar', async () => {
    const model = new FednbModel(apiAnswering([[domain('a', 2, 1), domain('b', 3)]]).api);
    let changes = 0;
    model.changed.connect(() => changes++);
    expect(await model.refresh()).toBe(true);
    expect(model.pendingTotal).toBe(5);
    expect(model.heldTotal).toBe(1);
    expect(statusText(model)).toBe('fednb: 5 pending, 1 held');
    expect(changes).toBe(1);
  });

  it("polls with @lumino/polling's Poll: backs off on failures up to the maximum, resets on success", async () => {
    jest.useFakeTimers();
    const down = new Error('down');
    const { api, calls } = apiAnswering([down, down, down, down, [domain('a', 1)]]);
    const model = new FednbModel(api, { interval: 1000, maxInterval: 3000 });
    const phases: string[] = [];
    model.poll.ticked.connect((_, state) => phases.push(state.phase));
    model.start();
    await advance(0);
    expect(calls()).toBe(1);
    expect(model.error).toBe('down');
    expect(statusText(model)).toBe('fednb: offline');
    expect(model.poll.state.phase).toBe('rejected');
    const waits: number[] = [];
    for (let i = 0; i < 4; i++) {
      const wait = model.poll.state.interval;
      waits.push(wait);
      await advance(wait - 1);
      expect(calls()).toBe(1 + i); // not before the wait is over
      await advance(1);
      expect(calls()).toBe(2 + i);
    }
    // Poll draws each wait at random up to twice the last one, never past the maximum
    waits.forEach(w => expect(w).toBeGreaterThan(0));
    waits.forEach(w => expect(w).toBeLessThanOrEqual(3000));
    expect(model.error).toBeNull(); // the fifth call answered
    expect(model.poll.state.phase).toBe('reconnected');
    expect(model.poll.state.interval).toBe(1000);
    expect(model.pendingTotal).toBe(1);
    expect(phases.filter(p => p === 'rejected')).toHaveLength(4);
    model.dispose();
  });

  it('stops polling on dispose: no call after it, however long one waits', async () => {
    jest.useFakeTimers();
    const { api, calls } = apiAnswering([[domain('a', 1)]]);
    const model = new FednbModel(api, { interval: 1000, maxInterval: 3000 });
    let changes = 0;
    model.changed.connect(() => changes++);
    model.start();
    await advance(0);
    await advance(1000);
    expect(calls()).toBe(2);
    model.dispose();
    expect(model.isDisposed).toBe(true);
    expect(model.poll.isDisposed).toBe(true);
    await advance(60_000);
    expect(calls()).toBe(2);
    expect(changes).toBe(2);
  });

  it('refreshes through the poll while polling, restarting its schedule', async () => {
    jest.useFakeTimers();
    const { api, calls } = apiAnswering([[domain('a', 1)]]);
    const model = new FednbModel(api, { interval: 1000, maxInterval: 3000 });
    model.start();
    await advance(0);
    await advance(600);
    const refreshed = model.refresh();
    await advance(0);
    expect(await refreshed).toBe(true);
    expect(calls()).toBe(2);
    await advance(999); // the next tick is an interval after the refresh, not after the start
    expect(calls()).toBe(2);
    await advance(1);
    expect(calls()).toBe(3);
    model.stop();
    await advance(10_000);
    expect(calls()).toBe(3);
    model.dispose();
  });

  it('finds a domain by name, reading the domains when never read, and says how to fix a missing one', async () => {
    const { api, calls } = apiAnswering([[domain('a', 1)]]);
    const model = new FednbModel(api);
    expect((await model.domain('a')).name).toBe('a');
    expect(calls()).toBe(1);
    await model.domain('a');
    expect(calls()).toBe(1);
    await expect(model.domain('zz')).rejects.toThrow('c.FednbLab.tokens_file');
  });

  it("counts only the domains the settings' filter shows", async () => {
    const model = new FednbModel(apiAnswering([[domain('a', 2, 1), domain('b', 3)]]).api);
    await model.refresh();
    model.filter = ['b'];
    expect(model.domains.map(d => d.name)).toEqual(['b']);
    expect(statusText(model)).toBe('fednb: 3 pending');
    model.filter = [];
    expect(model.pendingTotal).toBe(5);
  });

  it('keeps the last list when a refresh fails', async () => {
    const model = new FednbModel(apiAnswering([[domain('a', 4)], new Error('timeout')]).api);
    await model.refresh();
    expect(await model.refresh()).toBe(false);
    expect(model.error).toBe('timeout');
    expect(model.pendingTotal).toBe(4);
    expect(statusText(model)).toBe('fednb: 4 pending');
  });
});

const budget: IBudget = fixtureBudget();

describe('helpers', () => {
  it('lists what a reviewer reads, as text', () => {
    const r = fixtureRequest({
      id: 'abcdefgh12',
      source: '<script>x</script>',
      params: {},
      weights: null,
      metrics: {},
      runs: 3,
      runs_used: 1,
      description: '<img src=x onerror=alert(1)>',
      epsilon_per_run: 0.51234,
      projected_epsilon: 1.5,
      budget
    });
    const facts = Object.fromEntries(requestFacts(r));
    expect(facts['code hash (SHA-256)']).toBe('f'.repeat(64));
    expect(facts['description']).toBe('<img src=x onerror=alert(1)>');
    expect(facts['client-level DP']).toBe('clip 1, noise multiplier 2');
    expect(facts['ε per run']).toBe('0.5123 (δ 1.0e-6)');
    expect(facts['projected ε (all runs)']).toBe('1.5');
    expect(facts['budget left']).toBe('7 of 10 left (2.5 spent, 0.5 reserved)');
    expect(facts['previous approved hash']).toBe('none: first version');
  });

  it('measures a budget', () => {
    expect(budgetFraction(budget)).toBeCloseTo(0.3);
    expect(budgetFraction({ ...budget, epsilon_budget: null })).toBe(0);
    expect(budgetLine({ ...budget, epsilon_budget: null, epsilon_reserved: 0 })).toBe('2.5 spent, no cap');
  });

  it('classifies diff lines', () => {
    const kinds = diffLines('--- a\n+++ b\n@@ -1 +1 @@\n-old\n+new\n same\n').map(l => l.kind);
    expect(kinds).toEqual(['meta', 'meta', 'hunk', 'del', 'add', 'context']);
  });
});
