/**
 * The sidebar's Templates section: its controller over the real FednbApi and a scripted
 * server, and the view in jsdom: what an owner sees of the stats templates, the requests
 * they approved and the disclosure refusals, and what Approve sends.
 */
import { ITemplateRow, ITemplatesOverview } from '../src/api';
import { RequestLists, TemplatesController } from '../src/controllers';
import { FednbModel } from '../src/model';
import { TemplatesSection } from '../src/templates';
import { Sidebar } from '../src/views';
import { domain, find, server, settle } from './fixtures';

const TEMPLATES = 'GET domains/st-mary/templates';
const HOSTILE = '<img src=x onerror=alert(1)>';

function template(over: Partial<ITemplateRow> = {}): ITemplateRow {
  return {
    name: 'tables',
    functions: 'crosstab',
    datasets: 'rossi',
    scientists: 'alice',
    limits: '25 iterations/model; 1 run(s)/request; release auto',
    protection: 'disclosure',
    reviewers: 'olivia (1/1)',
    state: 'active',
    active: true,
    approved_by: ['olivia'],
    needed: 1,
    ...over
  };
}

const WAITING = template({
  name: 'glm.2p',
  functions: 'glm',
  reviewers: 'oscar (1/2)',
  state: 'waiting for a second owner',
  active: false,
  approved_by: ['oscar'],
  needed: 2
});

function overview(over: Partial<ITemplatesOverview> = {}): ITemplatesOverview {
  return {
    templates: [template(), WAITING],
    approved: [
      {
        request: 'req9req9req9',
        scientist: 'alice',
        function: 'stats_table',
        datasets: 'rossi',
        runs: '1/1',
        template: 'tables'
      }
    ],
    refusals: [
      {
        time: '2024-05-01 10:00:00',
        scientist: 'alice',
        request: 'req8req8req8',
        dataset: 'rossi',
        refusal: 'min_cell_count: a cell holds 1 to 4 rows'
      }
    ],
    ...over
  };
}

function section(routes: Parameters<typeof server>[0], user = 'olivia') {
  const { api, calls } = server({ [TEMPLATES]: { body: overview() }, ...routes });
  const controller = new TemplatesController(api, domain({ user }));
  const view = new TemplatesSection(controller);
  return { view, controller, calls };
}

async function open(view: TemplatesSection): Promise<void> {
  view.node.open = true; // the browser (and jsdom) fires 'toggle' in a later task
  await settle();
  await settle();
}

describe('TemplatesController', () => {
  it('reads nothing until opened, then the overview; a second owner may approve a waiting template', async () => {
    const { controller, calls } = section({}, 'olivia');
    expect(calls).toHaveLength(0);
    await controller.setOpen(true);
    expect(calls.map(c => `${c.method} ${c.path}`)).toEqual([TEMPLATES]);
    expect(controller.overview?.templates.map(t => t.name)).toEqual(['tables', 'glm.2p']);
    expect(controller.canApprove(template())).toBe(false); // already active
    expect(controller.canApprove(WAITING)).toBe(true); // olivia has not approved it
    expect(new TemplatesController(controller['api'], domain({ user: 'oscar' })).canApprove(WAITING)).toBe(false);
    expect(new TemplatesController(controller['api'], domain({ role: 'scientist' })).canApprove(WAITING)).toBe(false);
  });

  it("shows the domain's refusal (a scientist's token, say) as its error", async () => {
    const { controller } = section({ [TEMPLATES]: { status: 403, error: 'the owner only' } });
    await controller.setOpen(true);
    expect(controller.error).toBe('the owner only');
    expect(controller.overview).toBeNull();
  });

  it('refuses a template name that could change the path, without calling the server', async () => {
    const { controller, calls } = section({});
    await controller.approve('../users');
    expect(controller.message).toContain('refused: not a template name');
    expect(calls.map(c => c.path)).toEqual(['domains/st-mary/templates']); // only the re-read
  });
});

describe('TemplatesSection', () => {
  it('lists templates with limits and approval state, the approved requests and the refusals, as text', async () => {
    const hostile = template({ name: 'esc', scientists: HOSTILE });
    const { view } = section({ [TEMPLATES]: { body: overview({ templates: [template(), WAITING, hostile] }) } });
    expect(find(view.node, 'summary').textContent).toBe('Templates');
    await open(view);
    const node = view.node;
    expect(find(node, 'summary').textContent).toBe('Templates (3)');
    const tables = find(node, 'li[data-template="tables"]');
    expect(tables.textContent).toContain('tables: crosstab');
    expect(tables.textContent).toContain('25 iterations/model; 1 run(s)/request');
    expect(tables.textContent).toContain('protection: disclosure · approved by olivia (1/1)');
    expect(find(tables, '.fednb-template-state').textContent).toBe('active');
    const waiting = find(node, 'li[data-template="glm.2p"]');
    expect(find(waiting, '.fednb-template-state').textContent).toBe('waiting for a second owner');
    expect(waiting.textContent).toContain('oscar (1/2)');
    expect(tables.querySelector('.fednb-approve-template')).toBeNull();
    expect(waiting.querySelector('.fednb-approve-template')).not.toBeNull();
    expect(find(node, '.fednb-template-approved').textContent).toContain('template tables · 1/1 runs · #req9req9req9');
    expect(find(node, '.fednb-refusals .fednb-refusal').textContent).toBe('min_cell_count: a cell holds 1 to 4 rows');
    expect(find(node, 'li[data-template="esc"]').textContent).toContain(HOSTILE); // text, not markup
    expect(node.querySelector('img')).toBeNull();
  });

  it('approves as the second owner, says so, and re-reads the list', async () => {
    let approved = false;
    const active = { ...WAITING, state: 'active', active: true, approved_by: ['oscar', 'olivia'] };
    const { view, calls } = section({
      [TEMPLATES]: () => ({ body: overview({ templates: [template(), approved ? active : WAITING] }) }),
      'POST domains/st-mary/templates/glm.2p/approve': () => {
        approved = true;
        return { body: active };
      }
    });
    await open(view);
    find(view.node, '.fednb-approve-template').click();
    await settle();
    expect(calls.map(c => `${c.method} ${c.path}`)).toEqual([
      TEMPLATES,
      'POST domains/st-mary/templates/glm.2p/approve',
      TEMPLATES
    ]);
    expect(find(view.node, '.fednb-message').textContent).toBe('approved template glm.2p: active');
    expect(view.node.querySelector('.fednb-approve-template')).toBeNull();
  });

  it('shows the empty states and a refused approval', async () => {
    const { view } = section({
      [TEMPLATES]: { body: overview({ templates: [WAITING], approved: [], refusals: [] }) },
      'POST domains/st-mary/templates/glm.2p/approve': { status: 403, error: 'oscar already approved' }
    });
    await open(view);
    expect(find(view.node, '.fednb-template-approved').textContent).toContain('none yet');
    expect(find(view.node, '.fednb-refusals').textContent).toContain('none');
    find(view.node, '.fednb-approve-template').click();
    await settle();
    expect(find(view.node, '.fednb-message').textContent).toBe('refused: oscar already approved');
  });
});

describe('Sidebar templates', () => {
  it("gives an owner's domain a Templates section that stays open and is re-read on refresh", async () => {
    const alice = domain({ name: 'st-mary-as-alice', user: 'alice', role: 'scientist' });
    const { api, calls } = server({
      'GET domains': { body: [domain(), alice] },
      'GET domains/st-mary/requests?status=pending': { body: [] },
      'GET domains/st-mary-as-alice/requests': { body: [] },
      [TEMPLATES]: { body: overview() }
    });
    const model = new FednbModel(api);
    const view = new Sidebar(new RequestLists(model), {
      openRequest: () => undefined,
      openHeld: () => undefined,
      openBudget: () => undefined
    });
    await model.refresh();
    await settle();
    expect(view.node.querySelector('section[data-domain="st-mary-as-alice"] .fednb-templates')).toBeNull();
    const details = find<HTMLDetailsElement>(view.node, 'section[data-domain="st-mary"] details.fednb-templates');
    expect(calls.filter(c => c.path.endsWith('templates'))).toHaveLength(0); // closed: not read
    details.open = true;
    await settle();
    await settle();
    await model.refresh();
    await settle();
    const again = find<HTMLDetailsElement>(view.node, 'section[data-domain="st-mary"] details.fednb-templates');
    expect(again).toBe(details); // the same node: still open after the refresh redrew the sidebar
    expect(again.open).toBe(true);
    expect(calls.filter(c => c.path.endsWith('templates'))).toHaveLength(2);
    expect(find(again, 'li[data-template="tables"]').textContent).toContain('tables: crosstab');
    view.dispose();
  });
});
