/**
 * The sidebar and a request's review. The views never call the API: they render the
 * state of a controller (controllers.ts) and hand their buttons to it. Request text
 * reaches the page only through `dom.ts` (textContent) or the injected source renderer
 * (JupyterLab's read-only CodeMirror editor in the plugin, a <pre> by default).
 */
import { IDisposable } from '@lumino/disposable';
import { Widget } from '@lumino/widgets';

import { IDomainSummary } from './api';
import { IDomainBlock, RequestLists, ReviewController } from './controllers';
import { button, clear, el, factsTable, table } from './dom';
import { diffLines, formatEpsilon, requestFacts, signedIn } from './model';
import { card, requestDecisionView, specView } from './request';
import { TemplatesSection } from './templates';

export interface IOpeners {
  openRequest(domain: IDomainSummary, id: string): void;
  openHeld(domain: IDomainSummary): void;
  openBudget(domain: IDomainSummary): void;
}

/** Puts a request's source into `host` (as text); what it returns is disposed with the view. */
export type SourceRenderer = (source: string, host: HTMLElement) => IDisposable | null;

/** The renderer without JupyterLab's editors: the source as the text of a <pre>. */
export const preRenderer: SourceRenderer = (source, host) => {
  host.appendChild(el('pre', { text: source }));
  return null;
};

/**
 * The left sidebar: per domain, its pending requests (owner) or your requests (scientist);
 * an owner's domain also has a Templates section (templates.ts), kept open across refreshes.
 */
export class Sidebar extends Widget {
  constructor(
    readonly lists: RequestLists,
    private readonly openers: IOpeners
  ) {
    super();
    this.addClass('fednb-sidebar');
    this.id = 'fednb-sidebar';
    this.title.caption = 'Federated requests';
    this._status = el('div', { cls: 'fednb-status-line' });
    this._list = el('div', { cls: 'fednb-domains' });
    const refresh = button('Refresh', 'fednb-refresh', () => void this.lists.model.refresh());
    this.node.appendChild(el('div', { cls: 'fednb-header' }, [el('h2', { text: 'Federated requests' }), refresh]));
    this.node.appendChild(this._status);
    this.node.appendChild(this._list);
    lists.changed.connect(() => this.render(), this);
  }

  render(): void {
    const model = this.lists.model;
    this._status.textContent = model.error
      ? `cannot refresh: ${model.error}`
      : this.lists.blocks.length === 0
        ? 'No domains configured: set c.FednbLab.tokens_file (see fednb docs/lab.md).'
        : `updated ${new Date().toLocaleTimeString()}`;
    clear(this._list);
    this.lists.blocks.forEach(b => this._list.appendChild(this.domainBlock(b)));
  }

  dispose(): void {
    this._sections.forEach(s => s.dispose());
    this.lists.dispose();
    super.dispose();
  }

  /** The domain's Templates section: the same node (and open state) while its controller lasts. */
  private templatesSection(d: IDomainSummary): HTMLElement {
    const controller = this.lists.templates(d);
    let section = this._sections.get(d.name);
    if (section?.controller !== controller) {
      section?.dispose();
      section = new TemplatesSection(controller);
      this._sections.set(d.name, section);
    }
    return section.node;
  }

  private domainBlock({ domain: d, requests, error }: IDomainBlock): HTMLElement {
    const block = el('section', { cls: 'fednb-domain', attrs: { 'data-domain': d.name } }, [
      el('h3', { text: `${d.title} · ${signedIn(d)}`, title: d.url })
    ]);
    if (error) {
      block.appendChild(el('div', { cls: 'fednb-error', text: error }));
    }
    if (d.error) {
      return block; // the domain itself is unreachable: nothing else to show
    }
    const owner = d.role === 'owner';
    block.appendChild(
      el('div', { cls: 'fednb-subhead', text: owner ? `${requests.length} pending` : 'your requests' })
    );
    const list = el('ul', { cls: 'fednb-requests' });
    for (const r of requests) {
      const dp = r.dp || r.kind !== 'update';
      const runs = `${r.runs} run${r.runs === 1 ? '' : 's'}`;
      const item = el(
        'li',
        { cls: 'fednb-request-item', attrs: { 'data-request': r.id, tabindex: '0', role: 'button' } },
        [
          el('div', {}, [
            el('span', { cls: 'fednb-request-title', text: `${r.function_name} (${r.kind})` }),
            el('span', { cls: `fednb-badge fednb-tone-${dp ? 'dp' : 'raw'}`, text: dp ? 'DP' : 'no DP' })
          ]),
          el('div', {
            cls: 'fednb-request-meta',
            text: `${r.scientist} · ${r.datasets.join(', ')} · ${runs}${owner ? '' : ` · ${r.status}`}`
          })
        ]
      );
      item.addEventListener('click', () => this.openers.openRequest(d, r.id));
      item.addEventListener('keydown', e => {
        if (e.key === 'Enter' || e.key === ' ') {
          this.openers.openRequest(d, r.id);
        }
      });
      list.appendChild(item);
    }
    block.appendChild(list);
    const links = el('div', { cls: 'fednb-links' });
    if (owner) {
      links.appendChild(button(`Held results (${d.held})`, 'fednb-open-held', () => this.openers.openHeld(d)));
    }
    links.appendChild(button('Budgets', 'fednb-open-budget', () => this.openers.openBudget(d)));
    block.appendChild(links);
    if (owner) {
      block.appendChild(this.templatesSection(d));
    }
    return block;
  }

  private _list: HTMLElement;
  private _sections = new Map<string, TemplatesSection>();
  private _status: HTMLElement;
}

/** One request, as its reviewer needs it; an owner gets Approve and Deny. */
export class ReviewPanel extends Widget {
  constructor(
    readonly controller: ReviewController,
    private readonly renderSource: SourceRenderer = preRenderer
  ) {
    super();
    this.addClass('fednb-review');
    this.id = `fednb-review-${controller.domain.name}-${controller.requestId}`;
    this.title.label = `Review ${controller.requestId.slice(0, 8)}`;
    this.title.closable = true;
    controller.changed.connect(() => this.render(), this);
  }

  dispose(): void {
    this._source?.dispose();
    this.controller.dispose();
    super.dispose();
  }

  render(): void {
    const c = this.controller;
    const r = c.info;
    clear(this.node);
    if (!r) {
      if (c.error) {
        this.node.appendChild(el('div', { cls: 'fednb-error', text: c.error }));
      }
      return;
    }
    this.title.label = `Review ${r.function_name}`;
    this.node.appendChild(el('h2', { text: `${r.function_name} from ${r.scientist} on ${c.domain.title}` }));
    if (c.message) {
      this.node.appendChild(el('div', { cls: 'fednb-message', text: c.message, attrs: { role: 'status' } }));
    }
    this.node.appendChild(requestDecisionView(r));
    if (c.canDecide) {
      this.node.appendChild(this.actions());
    }
    this.node.appendChild(card('Request', [factsTable(requestFacts(r))]));
    const params = Object.entries(r.params);
    if (params.length) {
      const rows = params.map(([k, p]) => [
        k,
        p.type,
        String(p.low ?? ''),
        String(p.high ?? ''),
        (p.choices ?? []).join(', ')
      ]);
      this.node.appendChild(
        card('Parameters the scientist may set', [table(['parameter', 'type', 'low', 'high', 'choices'], rows)])
      );
    }
    const outputs: HTMLElement[] = [];
    if (r.weights) {
      const rows = Object.entries(r.weights).map(([k, t]) => [k, `(${t.shape.join(', ')})`, t.dtype]);
      outputs.push(el('h5', { text: 'Weights in and out' }), table(['tensor', 'shape', 'dtype'], rows));
    }
    const metrics = Object.entries(r.metrics ?? {});
    if (metrics.length) {
      const rows = metrics.map(([k, [lo, hi]]) => [k, String(lo), String(hi)]);
      outputs.push(el('h5', { text: 'Metrics (clipped)' }), table(['metric', 'low', 'high'], rows));
    }
    if (outputs.length) {
      this.node.appendChild(card('What each run returns', outputs));
    }
    this.node.appendChild(specView(r) ?? card('Source', [this.sourceView(r.source)]));
    if (r.diff) {
      const lines = diffLines(r.diff).map(l => el('div', { cls: `fednb-diff-${l.kind}`, text: l.text }));
      this.node.appendChild(card('Diff against the last approved version', [el('pre', { cls: 'fednb-diff' }, lines)]));
    }
    if (c.runs.length) {
      const rows = c.runs.map(u => [
        u.id,
        u.dataset,
        u.status,
        u.reason ?? '',
        u.release_state ?? '',
        formatEpsilon(u.epsilon)
      ]);
      this.node.appendChild(card('Runs', [table(['run', 'dataset', 'status', 'reason', 'release', 'ε'], rows)]));
    }
  }

  private actions(): HTMLElement {
    const release = el('select', { cls: 'fednb-release', attrs: { 'aria-label': 'release mode' } }, [
      el('option', { text: 'manual release', attrs: { value: 'manual' } }),
      el('option', { text: 'auto release', attrs: { value: 'auto' } })
    ]);
    const reason = el('input', {
      cls: 'jp-mod-styled fednb-reason',
      attrs: { placeholder: 'reason to deny (the scientist sees it)', type: 'text', 'aria-label': 'reason to deny' }
    });
    const mode = (): 'auto' | 'manual' => (release.value === 'auto' ? 'auto' : 'manual');
    return el('div', { cls: 'fednb-actions' }, [
      release,
      button('Approve', 'jp-mod-accept fednb-approve', () => void this.controller.approve(mode())),
      reason,
      button('Deny', 'jp-mod-warn fednb-deny', () => void this.controller.deny(reason.value))
    ]);
  }

  private sourceView(source: string): HTMLElement {
    const host = el('div', { cls: 'fednb-source' });
    this._source?.dispose();
    this._source = this.renderSource(source, host);
    return host;
  }

  private _source: IDisposable | null = null;
}
