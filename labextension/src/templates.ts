/**
 * The sidebar's "Templates" section of an owner's domain: the stats templates (functions,
 * limits, approval state under the two-person rule), the requests they approved with no
 * owner action and the disclosure refusals. It renders a `TemplatesController`'s state
 * and never calls the API; every string goes in as text (dom.ts).
 */
import { IDisposable } from '@lumino/disposable';
import { Signal } from '@lumino/signaling';

import { IDisclosureRefusal, ITemplateApproved, ITemplateRow } from './api';
import { TemplatesController } from './controllers';
import { button, clear, el } from './dom';

/** A collapsible section (closed at first); opening it reads the templates. */
export class TemplatesSection implements IDisposable {
  constructor(readonly controller: TemplatesController) {
    this._summary = el('summary', { cls: 'fednb-templates-summary', text: 'Templates' });
    this._body = el('div', { cls: 'fednb-templates-body' });
    this.node = el('details', { cls: 'fednb-templates', attrs: { 'data-domain': controller.domain.name } }, [
      this._summary,
      this._body
    ]);
    this.node.addEventListener('toggle', () => void this.controller.setOpen(this.node.open));
    controller.changed.connect(() => this.render(), this);
    this.render();
  }

  readonly node: HTMLDetailsElement;

  get isDisposed(): boolean {
    return this._disposed;
  }

  dispose(): void {
    this._disposed = true;
    Signal.clearData(this);
  }

  render(): void {
    const c = this.controller;
    const o = c.overview;
    this._summary.textContent = o ? `Templates (${o.templates.length})` : 'Templates';
    clear(this._body);
    for (const [text, cls] of [
      [c.error, 'fednb-error'],
      [c.message, 'fednb-message']
    ]) {
      if (text) {
        this._body.appendChild(el('div', { cls, text, attrs: { role: 'status' } }));
      }
    }
    if (!o) {
      if (!c.error) {
        this._body.appendChild(el('div', { cls: 'fednb-request-meta', text: 'reading…' }));
      }
      return;
    }
    const list = el(
      'ul',
      { cls: 'fednb-template-list' },
      o.templates.map(t => this.template(t))
    );
    this._body.appendChild(list);
    if (!o.templates.length) {
      this._body.appendChild(
        el('div', {
          cls: 'fednb-empty',
          text: 'No stats templates: add one with `fednb domain templates add FILE.json`.'
        })
      );
    }
    this._body.appendChild(
      group('Approved by a template', 'fednb-template-approved', o.approved.map(approvedItem), 'none yet')
    );
    this._body.appendChild(
      group('Disclosure refusals (newest first)', 'fednb-refusals', o.refusals.map(refusalItem), 'none')
    );
  }

  private template(t: ITemplateRow): HTMLElement {
    const tone = t.active ? 'ok' : 'raw';
    const item = el('li', { cls: 'fednb-template', attrs: { 'data-template': t.name } }, [
      el('div', {}, [
        el('span', { cls: 'fednb-request-title', text: `${t.name}: ${t.functions}` }),
        el('span', { cls: `fednb-badge fednb-tone-${tone} fednb-template-state`, text: t.state })
      ]),
      el('div', { cls: 'fednb-request-meta', text: `${t.datasets} · for ${t.scientists}` }),
      el('div', { cls: 'fednb-request-meta fednb-template-limits', text: t.limits }),
      el('div', {
        cls: 'fednb-request-meta',
        text: `protection: ${t.protection} · approved by ${t.reviewers}`
      })
    ]);
    if (this.controller.canApprove(t)) {
      item.appendChild(
        button('Approve (second owner)', 'jp-mod-accept fednb-approve-template', () => {
          void this.controller.approve(t.name);
        })
      );
    }
    return item;
  }

  private _body: HTMLElement;
  private _disposed = false;
  private _summary: HTMLElement;
}

function group(title: string, cls: string, items: HTMLElement[], empty: string): HTMLElement {
  return el('div', { cls }, [
    el('h4', { text: title }),
    items.length
      ? el('ul', { cls: 'fednb-template-events' }, items)
      : el('div', { cls: 'fednb-request-meta fednb-templates-none', text: empty })
  ]);
}

function approvedItem(a: ITemplateApproved): HTMLElement {
  return el('li', { attrs: { 'data-request': a.request } }, [
    el('div', { text: `${a.function} of ${a.scientist} on ${a.datasets}` }),
    el('div', { cls: 'fednb-request-meta', text: `template ${a.template} · ${a.runs} runs · #${a.request}` })
  ]);
}

function refusalItem(r: IDisclosureRefusal): HTMLElement {
  return el('li', { attrs: { 'data-request': r.request } }, [
    el('div', { text: `${r.scientist} on ${r.dataset} · ${r.time}` }),
    el('div', { cls: 'fednb-refusal', text: r.refusal }),
    el('div', { cls: 'fednb-request-meta', text: `request #${r.request}` })
  ]);
}
