/**
 * A domain's held results and budgets. Like views.ts, these render a controller's state
 * (controllers.ts) and never call the API; every string goes in as text (dom.ts).
 */
import { Widget } from '@lumino/widgets';

import { BudgetController, HeldController } from './controllers';
import { button, clear, el } from './dom';
import { budgetFraction, budgetLine, formatEpsilon } from './model';
import { card } from './request';
import { decisionView, reviewBodyView } from './review';

/** Held results of one domain: pick one to see what it would release, then Release or Withhold. */
export class HeldPanel extends Widget {
  constructor(readonly controller: HeldController) {
    super();
    this.addClass('fednb-held');
    this.id = `fednb-held-${controller.domain.name}`;
    this.title.label = `Held results · ${controller.domain.title}`;
    this.title.closable = true;
    controller.changed.connect(() => this.render(), this);
  }

  dispose(): void {
    this.controller.dispose();
    super.dispose();
  }

  render(): void {
    const c = this.controller;
    clear(this.node);
    this.node.appendChild(el('h2', { text: `Held results of ${c.domain.title}` }));
    this.node.appendChild(
      el('div', {
        cls: 'fednb-request-meta',
        text: 'Results of runs without differential privacy wait here: pick one to see exactly what releasing it sends, before anything leaves the hospital.'
      })
    );
    for (const [text, cls] of [
      [c.error, 'fednb-error'],
      [c.message, 'fednb-message']
    ]) {
      if (text) {
        this.node.appendChild(el('div', { cls, text, attrs: { role: 'status' } }));
      }
    }
    if (!c.runs.length) {
      this.node.appendChild(el('div', { cls: 'fednb-card fednb-empty', text: 'No results are held.' }));
      return;
    }
    this.node.appendChild(this.list());
    const sel = c.runs.find(r => r.id === c.selected);
    if (!sel) {
      this.node.appendChild(
        el('div', { cls: 'fednb-card fednb-empty', text: 'Pick a result to see exactly what releasing it sends.' })
      );
      return;
    }
    const review = c.review;
    if (review) {
      this.node.appendChild(decisionView(review));
    } else if (c.reviewError) {
      this.node.appendChild(el('div', { cls: 'fednb-error', text: c.reviewError }));
    }
    this.node.appendChild(
      el('div', { cls: 'fednb-actions' }, [
        button(`Release to ${sel.scientist}`, 'jp-mod-accept fednb-release-run', () => void c.release()),
        button('Withhold', 'jp-mod-warn fednb-withhold-run', () => void c.withhold())
      ])
    );
    if (review) {
      this.node.appendChild(reviewBodyView(review));
    }
    if (sel.owner_log) {
      this.node.appendChild(card('Log (owner only)', [el('pre', { cls: 'fednb-log', text: sel.owner_log })]));
    }
  }

  private list(): HTMLElement {
    const c = this.controller;
    const rows = c.runs.map(r => {
      const cells = [r.id, r.scientist, r.dataset, r.status, formatEpsilon(r.epsilon), r.finished ?? ''];
      const row = el(
        'tr',
        { cls: 'fednb-held-row', attrs: { 'data-run': r.id, tabindex: '0' } },
        cells.map(text => el('td', { text }))
      );
      if (r.id === c.selected) {
        row.classList.add('fednb-selected');
      }
      row.addEventListener('click', () => void c.select(r.id));
      row.addEventListener('keydown', e => {
        if (e.key === 'Enter' || e.key === ' ') {
          void c.select(r.id);
        }
      });
      return row;
    });
    const header = ['run', 'scientist', 'dataset', 'status', 'ε', 'finished'].map(h => el('th', { text: h }));
    return el('table', { cls: 'fednb-table fednb-held-list' }, [
      el('thead', {}, [el('tr', {}, header)]),
      el('tbody', {}, rows)
    ]);
  }
}

/** Epsilon per (scientist, dataset) and per dataset, as bars. */
export class BudgetPanel extends Widget {
  constructor(readonly controller: BudgetController) {
    super();
    this.addClass('fednb-budget');
    this.id = `fednb-budget-${controller.domain.name}`;
    this.title.label = `Budgets · ${controller.domain.title}`;
    this.title.closable = true;
    controller.changed.connect(() => this.render(), this);
    this.render();
  }

  dispose(): void {
    this.controller.dispose();
    super.dispose();
  }

  render(): void {
    const c = this.controller;
    clear(this.node);
    this.node.appendChild(el('h2', { text: `Privacy budgets on ${c.domain.title}` }));
    if (c.error) {
      this.node.appendChild(el('div', { cls: 'fednb-error', text: c.error }));
      return;
    }
    if (c.loaded && !c.rows.length) {
      this.node.appendChild(el('div', { text: 'Nothing spent yet.' }));
    }
    for (const b of c.rows) {
      const fraction = budgetFraction(b);
      const level = fraction < 0.5 ? 'low' : fraction < 0.9 ? 'mid' : 'high';
      const label = `${(100 * fraction).toFixed(0)}% of the budget`;
      const bar = el('div', { cls: 'fednb-bar', attrs: { role: 'img', 'aria-label': label } }, [
        el('span', {
          cls: `fednb-bar-spent fednb-level-${level}`,
          attrs: { style: `width: ${(100 * fraction).toFixed(1)}%` }
        })
      ]);
      this.node.appendChild(
        el('div', { cls: 'fednb-budget-row fednb-card' }, [
          el('div', { text: `${b.scientist} on ${b.dataset}: ${budgetLine(b)}` }),
          bar
        ])
      );
    }
    for (const [d, b] of new Map(c.rows.map(b => [b.dataset, b]))) {
      const cap = b.dataset_cap === null ? 'no cap' : `cap ${formatEpsilon(b.dataset_cap)}`;
      const text = `${d}, all scientists: ${formatEpsilon(b.dataset_spent)} spent, ${cap}`;
      this.node.appendChild(el('div', { cls: 'fednb-budget-dataset', text }));
    }
  }
}
