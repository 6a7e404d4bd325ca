/**
 * The extension's views: the sidebar, a request's review, held results and budgets.
 * Request text reaches the page only through `dom.ts` (textContent) or a read-only
 * CodeMirror editor (which shows text).
 */
import { CodeEditor, IEditorServices } from '@jupyterlab/codeeditor';
import { Widget } from '@lumino/widgets';

import { FednbApiError, IDomainSummary, IRequestInfo, IResultReview, IRunInfo } from './api';
import { button, clear, el, factsTable, table } from './dom';
import { budgetFraction, budgetLine, diffLines, FednbModel, formatEpsilon, requestFacts, signedIn } from './model';
import { card, requestDecisionView, specView } from './request';
import { decisionView, reviewBodyView } from './review';

export interface IOpeners {
  openRequest(domain: IDomainSummary, id: string): void;
  openHeld(domain: IDomainSummary): void;
  openBudget(domain: IDomainSummary): void;
}

function message(e: unknown): string {
  return e instanceof FednbApiError || e instanceof Error ? e.message : String(e);
}

/** The left sidebar: per domain, its pending requests (owner) or your requests (scientist). */
export class Sidebar extends Widget {
  constructor(
    private readonly model: FednbModel,
    private readonly openers: IOpeners
  ) {
    super();
    this.addClass('fednb-sidebar');
    this.id = 'fednb-sidebar';
    this.title.caption = 'Federated requests';
    this._status = el('div', { cls: 'fednb-status-line' });
    this._list = el('div', { cls: 'fednb-domains' });
    const refresh = button('Refresh', 'fednb-refresh', () => void this.model.refresh());
    this.node.appendChild(el('div', { cls: 'fednb-header' }, [el('h2', { text: 'Federated requests' }), refresh]));
    this.node.appendChild(this._status);
    this.node.appendChild(this._list);
    model.changed.connect(() => void this.render(), this);
  }

  async render(): Promise<void> {
    const seq = ++this._seq;
    const domains = this.model.domains;
    const blocks = await Promise.all(domains.map(d => this.domainBlock(d)));
    if (seq !== this._seq) {
      return; // a newer render started meanwhile
    }
    this._status.textContent = this.model.error
      ? `cannot refresh: ${this.model.error}`
      : domains.length === 0
        ? 'No domains configured: set c.FednbLab.tokens_file (see fednb docs/lab.md).'
        : `updated ${new Date().toLocaleTimeString()}`;
    clear(this._list);
    blocks.forEach(b => this._list.appendChild(b));
  }

  private async domainBlock(d: IDomainSummary): Promise<HTMLElement> {
    const who = signedIn(d);
    const block = el('section', { cls: 'fednb-domain', attrs: { 'data-domain': d.name } }, [
      el('h3', { text: `${d.title} · ${who}`, title: d.url })
    ]);
    if (d.error) {
      block.appendChild(el('div', { cls: 'fednb-error', text: d.error }));
      return block;
    }
    const owner = d.role === 'owner';
    let requests: IRequestInfo[] = [];
    try {
      requests = await this.model.api.requests(d.name, owner ? 'pending' : undefined);
    } catch (e) {
      block.appendChild(el('div', { cls: 'fednb-error', text: message(e) }));
    }
    block.appendChild(el('div', { cls: 'fednb-subhead', text: owner ? `${requests.length} pending` : 'your requests' }));
    const list = el('ul', { cls: 'fednb-requests' });
    for (const r of requests) {
      const dp = r.dp || r.kind !== 'update';
      const item = el('li', { cls: 'fednb-request-item', attrs: { 'data-request': r.id, tabindex: '0', role: 'button' } }, [
        el('div', {}, [
          el('span', { cls: 'fednb-request-title', text: `${r.function_name} (${r.kind})` }),
          el('span', { cls: `fednb-badge fednb-tone-${dp ? 'dp' : 'raw'}`, text: dp ? 'DP' : 'no DP' })
        ]),
        el('div', {
          cls: 'fednb-request-meta',
          text: `${r.scientist} · ${r.datasets.join(', ')} · ${r.runs} run${r.runs === 1 ? '' : 's'}${owner ? '' : ` · ${r.status}`}`
        })
      ]);
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
    return block;
  }

  private _list: HTMLElement;
  private _seq = 0;
  private _status: HTMLElement;
}

/** One request, as its reviewer needs it; an owner gets Approve and Deny. */
export class ReviewPanel extends Widget {
  constructor(
    private readonly model: FednbModel,
    readonly domain: IDomainSummary,
    readonly requestId: string,
    private readonly editors: IEditorServices | null
  ) {
    super();
    this.addClass('fednb-review');
    this.id = `fednb-review-${domain.name}-${requestId}`;
    this.title.label = `Review ${requestId.slice(0, 8)}`;
    this.title.closable = true;
    void this.load();
  }

  get info(): IRequestInfo | null {
    return this._info;
  }

  async load(): Promise<void> {
    try {
      this._info = await this.model.api.request(this.domain.name, this.requestId);
      this._runs = await this.model.api.runs(this.domain.name, { requestId: this.requestId });
    } catch (e) {
      this.node.appendChild(el('div', { cls: 'fednb-error', text: message(e) }));
      return;
    }
    this.render();
  }

  async approve(release: 'auto' | 'manual'): Promise<void> {
    await this.act(() => this.model.api.approve(this.domain.name, this.requestId, release), `approved (${release} release)`);
  }

  async deny(reason: string): Promise<void> {
    await this.act(() => this.model.api.deny(this.domain.name, this.requestId, reason), 'denied');
  }

  private async act(fn: () => Promise<IRequestInfo>, done: string): Promise<void> {
    try {
      this._info = await fn();
      this._message = done;
    } catch (e) {
      this._message = `refused: ${message(e)}`;
    }
    this.render();
    void this.model.refresh();
  }

  private render(): void {
    const r = this._info;
    if (!r) {
      return;
    }
    this.title.label = `Review ${r.function_name}`;
    clear(this.node);
    const owner = this.domain.role === 'owner';
    this.node.appendChild(el('h2', { text: `${r.function_name} from ${r.scientist} on ${this.domain.title}` }));
    if (this._message) {
      this.node.appendChild(el('div', { cls: 'fednb-message', text: this._message, attrs: { role: 'status' } }));
    }
    this.node.appendChild(requestDecisionView(r));
    if (owner && r.status === 'pending') {
      const release = el('select', { cls: 'fednb-release', attrs: { 'aria-label': 'release mode' } }, [
        el('option', { text: 'manual release', attrs: { value: 'manual' } }),
        el('option', { text: 'auto release', attrs: { value: 'auto' } })
      ]);
      const reason = el('input', {
        cls: 'jp-mod-styled fednb-reason',
        attrs: { placeholder: 'reason to deny (the scientist sees it)', type: 'text', 'aria-label': 'reason to deny' }
      });
      this.node.appendChild(
        el('div', { cls: 'fednb-actions' }, [
          release,
          button('Approve', 'jp-mod-accept fednb-approve', () => void this.approve(release.value as 'auto' | 'manual')),
          reason,
          button('Deny', 'jp-mod-warn fednb-deny', () => void this.deny(reason.value))
        ])
      );
    }
    this.node.appendChild(card('Request', [factsTable(requestFacts(r))]));
    const params = Object.entries(r.params);
    if (params.length) {
      this.node.appendChild(
        card('Parameters the scientist may set', [
          table(
            ['parameter', 'type', 'low', 'high', 'choices'],
            params.map(([k, p]) => [k, p.type, String(p.low ?? ''), String(p.high ?? ''), (p.choices ?? []).join(', ')])
          )
        ])
      );
    }
    const outputs: HTMLElement[] = [];
    if (r.weights) {
      outputs.push(el('h5', { text: 'Weights in and out' }));
      outputs.push(table(['tensor', 'shape', 'dtype'], Object.entries(r.weights).map(([k, t]) => [k, `(${t.shape.join(', ')})`, t.dtype])));
    }
    const metrics = Object.entries(r.metrics ?? {});
    if (metrics.length) {
      outputs.push(el('h5', { text: 'Metrics (clipped)' }));
      outputs.push(table(['metric', 'low', 'high'], metrics.map(([k, [lo, hi]]) => [k, String(lo), String(hi)])));
    }
    if (outputs.length) {
      this.node.appendChild(card('What each run returns', outputs));
    }
    this.node.appendChild(specView(r) ?? card('Source', [this.sourceView(r.source)]));
    if (r.diff) {
      this.node.appendChild(
        card('Diff against the last approved version', [
          el(
            'pre',
            { cls: 'fednb-diff' },
            diffLines(r.diff).map(l => el('div', { cls: `fednb-diff-${l.kind}`, text: l.text }))
          )
        ])
      );
    }
    if (this._runs.length) {
      this.node.appendChild(
        card('Runs', [
          table(
            ['run', 'dataset', 'status', 'reason', 'release', 'ε'],
            this._runs.map(u => [u.id, u.dataset, u.status, u.reason ?? '', u.release_state ?? '', formatEpsilon(u.epsilon)])
          )
        ])
      );
    }
  }

  private sourceView(source: string): HTMLElement {
    const host = el('div', { cls: 'fednb-source' });
    if (this.editors) {
      const model = new CodeEditor.Model({ mimeType: 'text/x-python' });
      model.sharedModel.setSource(source);
      this._editor?.dispose();
      this._editor = this.editors.factoryService.newInlineEditor({ host, model, config: { readOnly: true, lineNumbers: true } });
    } else {
      host.appendChild(el('pre', { text: source }));
    }
    return host;
  }

  dispose(): void {
    this._editor?.dispose();
    super.dispose();
  }

  private _editor: CodeEditor.IEditor | null = null;
  private _info: IRequestInfo | null = null;
  private _message = '';
  private _runs: IRunInfo[] = [];
}

/** Held results of one domain: pick one to see what it would release, then Release or Withhold. */
export class HeldPanel extends Widget {
  constructor(
    private readonly model: FednbModel,
    readonly domain: IDomainSummary
  ) {
    super();
    this.addClass('fednb-held');
    this.id = `fednb-held-${domain.name}`;
    this.title.label = `Held results · ${domain.title}`;
    this.title.closable = true;
    void this.load();
  }

  get selected(): string | null {
    return this._selected;
  }

  async load(): Promise<void> {
    try {
      this._runs = await this.model.api.runs(this.domain.name, { releaseState: 'held' });
    } catch (e) {
      this._message = message(e);
    }
    this.render();
  }

  async release(runId?: string): Promise<void> {
    await this.act(runId, id => this.model.api.release(this.domain.name, id), 'released');
  }

  async withhold(runId?: string): Promise<void> {
    await this.act(runId, id => this.model.api.withhold(this.domain.name, id), 'withheld');
  }

  private async act(runId: string | undefined, fn: (id: string) => Promise<IRunInfo>, done: string): Promise<void> {
    const id = runId ?? this._selected;
    if (!id) {
      this._message = 'select a held result first';
      this.render();
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
    void this.model.refresh();
  }

  private render(): void {
    clear(this.node);
    this.node.appendChild(el('h2', { text: `Held results of ${this.domain.title}` }));
    this.node.appendChild(
      el('div', {
        cls: 'fednb-request-meta',
        text: 'Results of runs without differential privacy wait here: pick one to see exactly what releasing it sends, before anything leaves the hospital.'
      })
    );
    if (this._message) {
      this.node.appendChild(el('div', { cls: 'fednb-message', text: this._message, attrs: { role: 'status' } }));
    }
    if (!this._runs.length) {
      this.node.appendChild(el('div', { cls: 'fednb-card fednb-empty', text: 'No results are held.' }));
      return;
    }
    const rows = this._runs.map(r => {
      const row = el('tr', { cls: 'fednb-held-row', attrs: { 'data-run': r.id, tabindex: '0' } }, [
        el('td', { text: r.id }),
        el('td', { text: r.scientist }),
        el('td', { text: r.dataset }),
        el('td', { text: r.status }),
        el('td', { text: formatEpsilon(r.epsilon) }),
        el('td', { text: r.finished ?? '' })
      ]);
      if (r.id === this._selected) {
        row.classList.add('fednb-selected');
      }
      row.addEventListener('click', () => void this.select(r.id));
      row.addEventListener('keydown', e => {
        if (e.key === 'Enter' || e.key === ' ') {
          void this.select(r.id);
        }
      });
      return row;
    });
    this.node.appendChild(
      el('table', { cls: 'fednb-table fednb-held-list' }, [
        el('thead', {}, [el('tr', {}, ['run', 'scientist', 'dataset', 'status', 'ε', 'finished'].map(h => el('th', { text: h })))]),
        el('tbody', {}, rows)
      ])
    );
    const sel = this._runs.find(r => r.id === this._selected);
    if (!sel) {
      this.node.appendChild(el('div', { cls: 'fednb-card fednb-empty', text: 'Pick a result to see exactly what releasing it sends.' }));
      return;
    }
    const review = this._review?.run.id === sel.id ? this._review : null;
    if (review) {
      this.node.appendChild(decisionView(review));
    } else if (this._reviewError) {
      this.node.appendChild(el('div', { cls: 'fednb-error', text: this._reviewError }));
    }
    this.node.appendChild(
      el('div', { cls: 'fednb-actions' }, [
        button(`Release to ${sel.scientist}`, 'jp-mod-accept fednb-release-run', () => void this.release()),
        button('Withhold', 'jp-mod-warn fednb-withhold-run', () => void this.withhold())
      ])
    );
    if (review) {
      this.node.appendChild(reviewBodyView(review));
    }
    if (sel.owner_log) {
      this.node.appendChild(card('Log (owner only)', [el('pre', { cls: 'fednb-log', text: sel.owner_log })]));
    }
  }

  /** Pick a held result and fetch its review (values, metrics, the diff from the last release). */
  async select(runId: string): Promise<void> {
    this._selected = runId;
    this._reviewError = '';
    this.render();
    try {
      const review = await this.model.api.review(this.domain.name, runId);
      if (this._selected === runId) {
        this._review = review;
      }
    } catch (e) {
      this._reviewError = `cannot read this result: ${message(e)}`;
    }
    this.render();
  }

  get review(): IResultReview | null {
    return this._review;
  }

  private _message = '';
  private _review: IResultReview | null = null;
  private _reviewError = '';
  private _runs: IRunInfo[] = [];
  private _selected: string | null = null;
}

/** Epsilon per (scientist, dataset) and per dataset, as bars. */
export class BudgetPanel extends Widget {
  constructor(
    private readonly model: FednbModel,
    readonly domain: IDomainSummary
  ) {
    super();
    this.addClass('fednb-budget');
    this.id = `fednb-budget-${domain.name}`;
    this.title.label = `Budgets · ${domain.title}`;
    this.title.closable = true;
    void this.load();
  }

  async load(): Promise<void> {
    clear(this.node);
    this.node.appendChild(el('h2', { text: `Privacy budgets on ${this.domain.title}` }));
    try {
      const rows = await this.model.api.budget(this.domain.name);
      if (!rows.length) {
        this.node.appendChild(el('div', { text: 'Nothing spent yet.' }));
      }
      for (const b of rows) {
        const fraction = budgetFraction(b);
        const level = fraction < 0.5 ? 'low' : fraction < 0.9 ? 'mid' : 'high';
        const bar = el('div', { cls: 'fednb-bar', attrs: { role: 'img', 'aria-label': `${(100 * fraction).toFixed(0)}% of the budget` } }, [
          el('span', { cls: `fednb-bar-spent fednb-level-${level}`, attrs: { style: `width: ${(100 * fraction).toFixed(1)}%` } })
        ]);
        this.node.appendChild(
          el('div', { cls: 'fednb-budget-row fednb-card' }, [el('div', { text: `${b.scientist} on ${b.dataset}: ${budgetLine(b)}` }), bar])
        );
      }
      const perDataset = new Map(rows.map(b => [b.dataset, b]));
      for (const [d, b] of perDataset) {
        const cap = b.dataset_cap === null ? 'no cap' : `cap ${formatEpsilon(b.dataset_cap)}`;
        this.node.appendChild(
          el('div', { cls: 'fednb-budget-dataset', text: `${d}, all scientists: ${formatEpsilon(b.dataset_spent)} spent, ${cap}` })
        );
      }
    } catch (e) {
      this.node.appendChild(el('div', { cls: 'fednb-error', text: message(e) }));
    }
  }
}
