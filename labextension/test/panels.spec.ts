/**
 * Held results and budgets, rendered in jsdom from controllers given the real FednbApi
 * over a scripted server: what the owner reads before releasing, and what each button sends.
 */
import { BudgetController, HeldController, viewKey } from '../src/controllers';
import { BudgetPanel, HeldPanel } from '../src/panels';
import { budget, domain, find, RUN, run, review, server, settle } from './fixtures';

const HELD = 'GET domains/st-mary/runs?release_state=held';

describe('HeldPanel', () => {
  it('shows a held result, its review once picked, and releases it', async () => {
    let held = [run()];
    const { api, calls } = server({
      [HELD]: () => ({ body: held }),
      [`GET domains/st-mary/runs/${RUN}/review`]: { body: review() },
      [`POST domains/st-mary/runs/${RUN}/release`]: () => {
        held = [];
        return { body: run({ release_state: 'released' }) };
      }
    });
    let decided = 0;
    const controller = new HeldController(api, domain(), () => decided++);
    const view = new HeldPanel(controller);
    await controller.load();
    expect(find(view.node, 'h2').textContent).toBe('Held results of St Mary');
    expect(view.node.querySelector('.fednb-release-run')).toBeNull(); // nothing picked yet
    find(view.node, `tr[data-run="${RUN}"]`).click();
    await settle();
    expect(find(view.node, `tr[data-run="${RUN}"]`).classList).toContain('fednb-selected');
    expect(find(view.node, '.fednb-decision').textContent).toContain('to alice: 1 tensor (2 values), 1 metric');
    expect(find(view.node, '.fednb-tensor[data-tensor="first"]').textContent).toContain('1.5');
    expect(find(view.node, '.fednb-log').textContent).toBe('started\nfinished');
    find(view.node, '.fednb-release-run').click();
    await settle();
    expect(calls.map(c => `${c.method} ${c.path}`)).toEqual([
      HELD,
      `GET domains/st-mary/runs/${RUN}/review`,
      `POST domains/st-mary/runs/${RUN}/release`,
      HELD
    ]);
    expect(find(view.node, '.fednb-message').textContent).toBe(`released run ${RUN}`);
    expect(find(view.node, '.fednb-empty').textContent).toBe('No results are held.');
    expect(decided).toBe(1);
  });

  it('shows a refused withhold and an unreadable review', async () => {
    const { api, calls } = server({
      [HELD]: { body: [run()] },
      [`GET domains/st-mary/runs/${RUN}/review`]: { status: 500, error: 'the result file is missing' },
      [`POST domains/st-mary/runs/${RUN}/withhold`]: { status: 409, error: 'the run was already released' }
    });
    const controller = new HeldController(api, domain());
    const view = new HeldPanel(controller);
    await controller.load();
    await controller.select(RUN);
    expect(find(view.node, '.fednb-error').textContent).toBe('cannot read this result: the result file is missing');
    find(view.node, '.fednb-withhold-run').click();
    await settle();
    expect(calls[2]).toEqual({ method: 'POST', path: `domains/st-mary/runs/${RUN}/withhold`, body: undefined });
    expect(find(view.node, '.fednb-message').textContent).toBe('refused: the run was already released');
  });

  it('asks for a pick before releasing, without calling the server', async () => {
    const { api, calls } = server({ [HELD]: { body: [run()] } });
    const controller = new HeldController(api, domain());
    const view = new HeldPanel(controller);
    await controller.load();
    await controller.release();
    expect(calls).toHaveLength(1);
    expect(find(view.node, '.fednb-message').textContent).toBe('select a held result first');
  });

  it('shows why the held results cannot be read', async () => {
    const { api } = server({ [HELD]: { status: 403, error: 'only the owner reads held results' } });
    const controller = new HeldController(api, domain());
    const view = new HeldPanel(controller);
    await controller.load();
    expect(find(view.node, '.fednb-error').textContent).toBe('only the owner reads held results');
  });
});

describe('BudgetPanel', () => {
  const row = budget();

  it('draws each budget as a bar and sums per dataset', async () => {
    const { api, calls } = server({ 'GET domains/st-mary/budget': { body: [row] } });
    const controller = new BudgetController(api, domain());
    const view = new BudgetPanel(controller);
    expect(find(view.node, 'h2').textContent).toBe('Privacy budgets on St Mary');
    await controller.load();
    expect(calls).toHaveLength(1);
    expect(find(view.node, '.fednb-budget-row').textContent).toContain(
      'alice on breast-cancer: 7 of 10 left (2.5 spent, 0.5 reserved)'
    );
    expect(find(view.node, '.fednb-bar').getAttribute('aria-label')).toBe('30% of the budget');
    expect(find(view.node, '.fednb-budget-dataset').textContent).toBe(
      'breast-cancer, all scientists: 2.5 spent, no cap'
    );
  });

  it('shows an empty domain and an error', async () => {
    let answer: { body: unknown } | { status: number; error: string } = { body: [] };
    const { api } = server({ 'GET domains/st-mary/budget': () => answer });
    const controller = new BudgetController(api, domain());
    const view = new BudgetPanel(controller);
    await controller.load();
    expect(view.node.textContent).toContain('Nothing spent yet.');
    answer = { status: 502, error: 'cannot reach st-mary' };
    await controller.load();
    expect(find(view.node, '.fednb-error').textContent).toBe('cannot reach st-mary');
  });
});

describe('view args', () => {
  it('name each view by what it shows, for the tracker and the layout restorer', () => {
    const { api } = server({});
    expect(viewKey(new HeldController(api, domain()).args)).toBe('held:st-mary:');
    expect(viewKey(new BudgetController(api, domain()).args)).toBe('budget:st-mary:');
    expect(viewKey({ view: 'review', domain: 'st-mary', id: 'abc' })).toBe('review:st-mary:abc');
  });
});
