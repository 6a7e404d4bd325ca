/**
 * The sidebar and a request's review, rendered in jsdom from controllers given the real
 * FednbApi over a scripted server: what a reviewer sees and what each button sends.
 */
import { IDisposable } from '@lumino/disposable';

import { RequestLists, ReviewController } from '../src/controllers';
import { FednbModel } from '../src/model';
import { ReviewPanel, Sidebar, SourceRenderer } from '../src/views';
import { domain, find, REQ, request, server, settle } from './fixtures';

const REQUEST = `GET domains/st-mary/requests/${REQ}`;
const RUNS = `GET domains/st-mary/runs?request_id=${REQ}`;

function panel(routes: Parameters<typeof server>[0], role: 'owner' | 'scientist' = 'owner') {
  const { api, calls } = server({ [REQUEST]: { body: request() }, [RUNS]: { body: [] }, ...routes });
  let decided = 0;
  const controller = new ReviewController(api, domain({ role }), REQ, () => decided++);
  const view = new ReviewPanel(controller);
  return { view, controller, calls, decided: () => decided };
}

describe('ReviewPanel', () => {
  it('renders a pending request for its owner: the facts as text, the source, Approve and Deny', async () => {
    const { view, controller, calls } = panel({});
    await controller.load();
    expect(calls.map(c => `${c.method} ${c.path}`)).toEqual([REQUEST, RUNS]);
    const node = view.node;
    expect(find(node, 'h2').textContent).toBe('train from alice on St Mary');
    expect(view.title.label).toBe('Review train');
    expect(node.textContent).toContain('f'.repeat(64));
    expect(node.textContent).toContain('<b>not bold</b>'); // untrusted text stays text
    expect(node.querySelector('b')).toBeNull();
    expect(find(node, '.fednb-source pre').textContent).toBe('def train(data):\n    return 1');
    expect(find(node, '.fednb-request-decision').textContent).toContain('w float64 (4)');
    expect(node.querySelector('.fednb-approve')).not.toBeNull();
    expect(node.querySelector('.fednb-deny')).not.toBeNull();
  });

  it('approves with the release mode chosen, then shows the outcome and drops the buttons', async () => {
    const approved = request({ status: 'approved', release: 'auto', reviewed_by: 'olivia' });
    const { view, controller, calls, decided } = panel({
      [`POST domains/st-mary/requests/${REQ}/approve`]: { body: approved }
    });
    await controller.load();
    find<HTMLSelectElement>(view.node, '.fednb-release').value = 'auto';
    find(view.node, '.fednb-approve').click();
    await settle();
    expect(calls[2]).toEqual({
      method: 'POST',
      path: `domains/st-mary/requests/${REQ}/approve`,
      body: { release: 'auto' }
    });
    expect(find(view.node, '.fednb-message').textContent).toBe('approved (auto release)');
    expect(view.node.querySelector('.fednb-approve')).toBeNull();
    expect(decided()).toBe(1);
  });

  it('denies with the reason typed, and shows the server refusing it', async () => {
    const { view, controller, calls, decided } = panel({
      [`POST domains/st-mary/requests/${REQ}/deny`]: { status: 409, error: 'the request was already reviewed' }
    });
    await controller.load();
    find<HTMLInputElement>(view.node, '.fednb-reason').value = '  one run tells us nothing ';
    find(view.node, '.fednb-deny').click();
    await settle();
    expect(calls[2]).toEqual({
      method: 'POST',
      path: `domains/st-mary/requests/${REQ}/deny`,
      body: { reason: 'one run tells us nothing' }
    });
    expect(find(view.node, '.fednb-message').textContent).toBe('refused: the request was already reviewed');
    expect(view.node.querySelector('.fednb-deny')).not.toBeNull(); // still pending: the owner may retry
    expect(decided()).toBe(1);
  });

  it('refuses a blank reason without calling the server', async () => {
    const { view, controller, calls } = panel({});
    await controller.load();
    find(view.node, '.fednb-deny').click();
    await settle();
    expect(calls).toHaveLength(2);
    expect(find(view.node, '.fednb-message').textContent).toContain('give a reason to deny');
  });

  it('shows why a request cannot be read', async () => {
    const { view, controller } = panel({ [REQUEST]: { status: 403, error: 'you may not read this request' } });
    await controller.load();
    expect(find(view.node, '.fednb-error').textContent).toBe('you may not read this request');
  });

  it('gives a scientist no Approve or Deny', async () => {
    const { view, controller } = panel({}, 'scientist');
    await controller.load();
    expect(controller.canDecide).toBe(false);
    expect(view.node.querySelector('.fednb-actions')).toBeNull();
  });

  it('disposes its controller and source editor, and ignores an answer that comes after', async () => {
    const disposed: string[] = [];
    const renderer: SourceRenderer = (source, host) => {
      host.textContent = source;
      const editor: IDisposable = { isDisposed: false, dispose: () => disposed.push('editor') };
      return editor;
    };
    const { api } = server({ [REQUEST]: { body: request() }, [RUNS]: { body: [] } });
    const controller = new ReviewController(api, domain(), REQ);
    const view = new ReviewPanel(controller, renderer);
    await controller.load();
    expect(find(view.node, '.fednb-source').textContent).toContain('def train');
    const late = controller.load();
    view.dispose();
    await late;
    expect(controller.isDisposed).toBe(true);
    expect(disposed).toEqual(['editor']);
  });
});

describe('Sidebar', () => {
  function sidebar(routes: Parameters<typeof server>[0]) {
    const { api, calls } = server(routes);
    const model = new FednbModel(api);
    const opened: string[] = [];
    const view = new Sidebar(new RequestLists(model), {
      openRequest: (d, id) => opened.push(`review ${d.name} ${id}`),
      openHeld: d => opened.push(`held ${d.name}`),
      openBudget: d => opened.push(`budget ${d.name}`)
    });
    return { view, model, calls, opened };
  }

  it("lists an owner's pending requests and a scientist's own, and opens what is clicked", async () => {
    const alice = domain({ name: 'st-mary-as-alice', user: 'alice', role: 'scientist' });
    const { view, model, calls, opened } = sidebar({
      'GET domains': { body: [domain(), alice] },
      'GET domains/st-mary/requests?status=pending': { body: [request()] },
      'GET domains/st-mary-as-alice/requests': { body: [request({ status: 'approved' })] }
    });
    await model.refresh();
    await settle();
    const owner = find(view.node, 'section[data-domain="st-mary"]');
    expect(find(owner, 'h3').textContent).toBe('St Mary · olivia (owner)');
    expect(find(owner, '.fednb-subhead').textContent).toBe('1 pending');
    expect(find(owner, `li[data-request="${REQ}"]`).textContent).toContain('alice · breast-cancer · 2 runs');
    const mine = find(view.node, 'section[data-domain="st-mary-as-alice"]');
    expect(find(mine, '.fednb-request-meta').textContent).toContain('approved');
    expect(mine.querySelector('.fednb-open-held')).toBeNull(); // held results are the owner's
    find(owner, `li[data-request="${REQ}"]`).click();
    find(owner, '.fednb-open-held').click();
    find(mine, '.fednb-open-budget').click();
    expect(opened).toEqual([`review st-mary ${REQ}`, 'held st-mary', 'budget st-mary-as-alice']);
    expect(calls.filter(c => c.method !== 'GET')).toEqual([]);
  });

  it('shows an unreachable domain and a failed refresh', async () => {
    let up = true;
    const { view, model } = sidebar({
      'GET domains': () => (up ? { body: [domain({ error: 'cannot reach st-mary' })] } : { status: 502, error: 'down' })
    });
    await model.refresh();
    await settle();
    expect(find(view.node, '.fednb-error').textContent).toBe('cannot reach st-mary');
    up = false;
    await model.refresh();
    await settle();
    expect(find(view.node, '.fednb-status-line').textContent).toBe('cannot refresh: down');
  });

  it('stops following the model once disposed', async () => {
    const { view, model, calls } = sidebar({ 'GET domains': { body: [domain()] } });
    view.dispose();
    await model.refresh();
    await settle();
    expect(calls.map(c => c.path)).toEqual(['domains']); // no request list read for a disposed sidebar
  });
});
