import { FednbApi, IBudget, IDomainSummary, IRequestInfo } from '../src/api';
import { budgetFraction, budgetLine, diffLines, FednbModel, IClock, requestFacts, statusText } from '../src/model';

function domain(name: string, pending: number, held = 0): IDomainSummary {
  return { name, url: `http://127.0.0.1/${name}`, title: name, user: 'olivia', role: 'owner', pending, held, error: null };
}

class ManualClock implements IClock {
  pending: { fn: () => void; ms: number }[] = [];
  setTimeout(fn: () => void, ms: number): unknown {
    this.pending.push({ fn, ms });
    return this.pending.length;
  }
  clearTimeout(): void {
    this.pending = [];
  }
  async fire(): Promise<void> {
    const next = this.pending.shift();
    next?.fn();
    await new Promise(r => setTimeout(r, 0));
  }
}

function apiAnswering(answers: (IDomainSummary[] | Error)[]): FednbApi {
  const api = new FednbApi(async () => ({ status: 200, json: async () => [] }));
  api.domains = async () => {
    const a = answers.shift();
    if (a instanceof Error || a === undefined) {
      throw a ?? new Error('no answer');
    }
    return a;
  };
  return api;
}

describe('FednbModel', () => {
  it('sums pending and held over the domains for the status bar', async () => {
    const model = new FednbModel(apiAnswering([[domain('a', 2, 1), domain('b', 3)]]));
    let changes = 0;
    model.changed.connect(() => changes++);
    expect(await model.refresh()).toBe(true);
    expect(model.pendingTotal).toBe(5);
    expect(model.heldTotal).toBe(1);
    expect(statusText(model)).toBe('fednb: 5 pending, 1 held');
    expect(changes).toBe(1);
  });

  it('backs off on failures up to the maximum and resets on success', async () => {
    const clock = new ManualClock();
    const model = new FednbModel(
      apiAnswering([new Error('down'), new Error('down'), new Error('down'), [domain('a', 1)]]),
      { interval: 1000, maxInterval: 3000, clock }
    );
    model.start();
    await new Promise(r => setTimeout(r, 0));
    expect(model.error).toBe('down');
    expect(clock.pending[0].ms).toBe(2000);
    expect(statusText(model)).toBe('fednb: offline');
    await clock.fire();
    expect(clock.pending[0].ms).toBe(3000);
    await clock.fire();
    expect(clock.pending[0].ms).toBe(3000);
    await clock.fire();
    expect(model.error).toBeNull();
    expect(clock.pending[0].ms).toBe(1000);
    expect(model.pendingTotal).toBe(1);
    model.stop();
    expect(clock.pending).toHaveLength(0);
  });

  it("counts only the domains the settings' filter shows", async () => {
    const model = new FednbModel(apiAnswering([[domain('a', 2, 1), domain('b', 3)]]));
    await model.refresh();
    model.filter = ['b'];
    expect(model.domains.map(d => d.name)).toEqual(['b']);
    expect(statusText(model)).toBe('fednb: 3 pending');
    model.filter = [];
    expect(model.pendingTotal).toBe(5);
  });

  it('keeps the last list when a refresh fails', async () => {
    const model = new FednbModel(apiAnswering([[domain('a', 4)], new Error('timeout')]));
    await model.refresh();
    expect(await model.refresh()).toBe(false);
    expect(model.pendingTotal).toBe(4);
    expect(statusText(model)).toBe('fednb: 4 pending');
  });
});

const budget: IBudget = {
  scientist: 'alice',
  dataset: 'breast-cancer',
  delta: 1e-6,
  epsilon_budget: 10,
  epsilon_spent: 2.5,
  epsilon_reserved: 0.5,
  epsilon_remaining: 7,
  dataset_cap: null,
  dataset_spent: 2.5,
  dataset_remaining: null
};

describe('helpers', () => {
  it('lists what a reviewer reads, as text', () => {
    const r = {
      id: 'abcdefgh12',
      scientist: 'alice',
      function_name: 'train',
      kind: 'update',
      source: '<script>x</script>',
      code_hash: 'f'.repeat(64),
      datasets: ['breast-cancer'],
      params: {},
      weights: null,
      metrics: {},
      runs: 3,
      runs_used: 1,
      description: '<img src=x onerror=alert(1)>',
      status: 'pending',
      release: null,
      reviewed_by: null,
      review_reason: null,
      created: '',
      reviewed: null,
      dp: { clip: 1, noise_multiplier: 2 },
      delta: 1e-6,
      epsilon_per_run: 0.51234,
      projected_epsilon: 1.5,
      budget
    } as IRequestInfo;
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
