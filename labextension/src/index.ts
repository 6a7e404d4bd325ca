/**
 * fednb's JupyterLab extension: a hospital's review desk inside JupyterLab.
 *
 * A left sidebar "Federated requests" lists, per configured domain, the pending
 * requests (for an owner) or your own requests (for a scientist); a request opens a
 * review in the main area (source in a read-only editor, hash, diff, schemas, runs,
 * privacy cost; Approve / Deny for owners); held results and budgets open likewise.
 * A status-bar item shows the pending count, polled with back-off. Every call goes to
 * fednb's jupyter_server extension (`/fednb/...`), which holds the domain tokens.
 */
import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, InputDialog, MainAreaWidget } from '@jupyterlab/apputils';
import { IEditorServices } from '@jupyterlab/codeeditor';
import { ServerConnection } from '@jupyterlab/services';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { Fetcher, FednbApi, IDomainSummary } from './api';
import { FednbModel, statusText } from './model';
import { BudgetPanel, HeldPanel, ReviewPanel, Sidebar } from './views';

const PLUGIN_ID = 'fednb-labextension:plugin';

const ICON = new LabIcon({
  name: 'fednb:requests',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" viewBox="0 0 24 24"><path class="jp-icon3" fill="#616161" ' +
    // a clipboard with a check: a review desk (Material's "assignment turned in")
    'd="M19 3h-4.18C14.4 1.84 13.3 1 12 1s-2.4.84-2.82 2H5c-1.1 0-2 .9-2 2v14c0 1.1.9 2 2 2h14c1.1 0 2-.9 ' +
    '2-2V5c0-1.1-.9-2-2-2zm-7 0c.55 0 1 .45 1 1s-.45 1-1 1-1-.45-1-1 .45-1 1-1zm-2 14l-4-4 1.41-1.41L10 ' +
    '14.17l6.59-6.59L18 9l-8 8z"/></svg>'
});

export namespace CommandIDs {
  export const open = 'fednb:open';
  export const refresh = 'fednb:refresh';
  export const openRequest = 'fednb:open-request';
  export const approve = 'fednb:approve';
  export const deny = 'fednb:deny';
  export const openHeld = 'fednb:open-held';
  export const release = 'fednb:release';
  export const withhold = 'fednb:withhold';
  export const openBudget = 'fednb:open-budget';
}

function serverFetcher(): Fetcher {
  const settings = ServerConnection.makeSettings();
  const base = settings.baseUrl.replace(/\/$/, '') + '/fednb/';
  return async (path, init) => {
    const resp = await ServerConnection.makeRequest(base + path, { method: init.method, body: init.body }, settings);
    return { status: resp.status, json: () => resp.json() };
  };
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Federated requests: review, approve and release inside JupyterLab (fednb).',
  autoStart: true,
  optional: [ICommandPalette, IStatusBar, ISettingRegistry, ILayoutRestorer, IEditorServices],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    statusBar: IStatusBar | null,
    settingRegistry: ISettingRegistry | null,
    restorer: ILayoutRestorer | null,
    editors: IEditorServices | null
  ) => {
    const model = new FednbModel(new FednbApi(serverFetcher()), { interval: 10_000, maxInterval: 300_000 });
    const opened = new Map<string, MainAreaWidget<Widget>>();

    const show = <T extends Widget>(content: T): T => {
      const existing = opened.get(content.id);
      if (existing && !existing.isDisposed) {
        content.dispose();
        app.shell.activateById(existing.id);
        return existing.content as T;
      }
      const main = new MainAreaWidget<T>({ content });
      main.id = `${content.id}-main`;
      main.title.label = content.title.label;
      main.title.icon = ICON;
      main.title.closable = true;
      content.title.changed.connect(() => (main.title.label = content.title.label));
      opened.set(content.id, main as unknown as MainAreaWidget<Widget>);
      main.disposed.connect(() => opened.delete(content.id));
      app.shell.add(main, 'main');
      app.shell.activateById(main.id);
      return content;
    };

    const domainByName = (name: unknown): IDomainSummary => {
      const d = model.domains.find(x => x.name === name);
      if (!d) {
        throw new Error(`no domain ${String(name)} is configured`);
      }
      return d;
    };
    const current = <T extends Widget>(cls: new (...a: never[]) => T): T | null => {
      const w = app.shell.currentWidget;
      return w instanceof MainAreaWidget && w.content instanceof cls ? (w.content as T) : null;
    };

    const sidebar = new Sidebar(model, {
      openRequest: (d, id) => void app.commands.execute(CommandIDs.openRequest, { domain: d.name, id }),
      openHeld: d => void app.commands.execute(CommandIDs.openHeld, { domain: d.name }),
      openBudget: d => void app.commands.execute(CommandIDs.openBudget, { domain: d.name })
    });
    sidebar.title.icon = ICON;
    app.shell.add(sidebar, 'left', { rank: 650 });
    restorer?.add(sidebar, 'fednb-sidebar');

    app.commands.addCommand(CommandIDs.open, {
      label: 'Federated requests: show the sidebar',
      execute: () => app.shell.activateById(sidebar.id)
    });
    app.commands.addCommand(CommandIDs.refresh, {
      label: 'Federated requests: refresh now',
      execute: () => model.refresh()
    });
    app.commands.addCommand(CommandIDs.openRequest, {
      label: 'Federated requests: open a request',
      execute: args => show(new ReviewPanel(model, domainByName(args.domain), String(args.id), editors))
    });
    app.commands.addCommand(CommandIDs.approve, {
      label: 'Federated requests: approve the request under review',
      isEnabled: () => current(ReviewPanel)?.info?.status === 'pending',
      execute: async args => {
        const panel = current(ReviewPanel);
        const release = args.release === 'auto' ? 'auto' : 'manual';
        await panel?.approve(release);
      }
    });
    app.commands.addCommand(CommandIDs.deny, {
      label: 'Federated requests: deny the request under review…',
      isEnabled: () => current(ReviewPanel)?.info?.status === 'pending',
      execute: async args => {
        const panel = current(ReviewPanel);
        let reason = typeof args.reason === 'string' ? args.reason : '';
        if (!reason) {
          const r = await InputDialog.getText({ title: 'Reason to deny (the scientist sees it)' });
          reason = r.button.accept ? r.value ?? '' : '';
        }
        if (panel && reason) {
          await panel.deny(reason);
        }
      }
    });
    app.commands.addCommand(CommandIDs.openHeld, {
      label: 'Federated requests: held results',
      execute: args => {
        const d = args.domain ? domainByName(args.domain) : model.domains.find(x => x.role === 'owner');
        return d ? show(new HeldPanel(model, d)) : undefined;
      }
    });
    app.commands.addCommand(CommandIDs.release, {
      label: 'Federated requests: release the selected held result',
      isEnabled: () => !!current(HeldPanel)?.selected,
      execute: () => current(HeldPanel)?.release()
    });
    app.commands.addCommand(CommandIDs.withhold, {
      label: 'Federated requests: withhold the selected held result',
      isEnabled: () => !!current(HeldPanel)?.selected,
      execute: () => current(HeldPanel)?.withhold()
    });
    app.commands.addCommand(CommandIDs.openBudget, {
      label: 'Federated requests: budgets',
      execute: args => {
        const d = args.domain ? domainByName(args.domain) : model.domains[0];
        return d ? show(new BudgetPanel(model, d)) : undefined;
      }
    });
    if (palette) {
      const category = 'Federated requests';
      for (const command of Object.values(CommandIDs)) {
        if (command !== CommandIDs.openRequest) {
          palette.addItem({ command, category });
        }
      }
    }

    if (statusBar) {
      const item = new Widget();
      item.addClass('fednb-statusbar');
      item.node.textContent = 'fednb: …';
      item.node.title = 'Federated requests pending review (click: show the sidebar)';
      item.node.addEventListener('click', () => app.shell.activateById(sidebar.id));
      model.changed.connect(() => (item.node.textContent = statusText(model)));
      statusBar.registerStatusItem('fednb-labextension:status', { item, align: 'left', rank: 200 });
    }

    const applySettings = (s: ISettingRegistry.ISettings): void => {
      const poll = Number(s.get('pollSeconds').composite ?? 10);
      const maxPoll = Number(s.get('maxPollSeconds').composite ?? 300);
      model.configure({ interval: Math.max(1, poll) * 1000, maxInterval: Math.max(poll, maxPoll) * 1000 });
      model.filter = (s.get('domains').composite as string[] | undefined) ?? [];
    };
    if (settingRegistry) {
      settingRegistry
        .load(PLUGIN_ID)
        .then(s => {
          applySettings(s);
          s.changed.connect(applySettings);
        })
        .catch(reason => console.warn('fednb: settings not loaded', reason));
    }
    void app.restored.then(() => model.start());
  }
};

export default plugin;
