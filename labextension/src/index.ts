/**
 * fednb's JupyterLab extension: a hospital's review desk inside JupyterLab.
 *
 * A left sidebar "Federated requests" lists, per configured domain, the pending
 * requests (for an owner) or your own requests (for a scientist); a request opens a
 * review in the main area (source in a read-only editor, hash, diff, schemas, runs,
 * privacy cost; Approve / Deny for owners); held results and budgets open likewise.
 * A status-bar item shows the pending count. From JupyterLab it uses: `Poll`
 * (@lumino/polling) for polling with back-off, a `WidgetTracker` with the layout restorer
 * so open views come back after a reload, and the read-only CodeMirror editor. Every call
 * goes to fednb's jupyter_server extension (`/fednb/...`), which holds the domain tokens.
 */
import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, InputDialog, MainAreaWidget, WidgetTracker } from '@jupyterlab/apputils';
import { CodeEditor, IEditorServices } from '@jupyterlab/codeeditor';
import { ServerConnection } from '@jupyterlab/services';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { Fetcher, FednbApi } from './api';
import { BudgetController, HeldController, IViewArgs, RequestLists, ReviewController, viewKey } from './controllers';
import { FednbModel, statusText } from './model';
import { BudgetPanel, HeldPanel } from './panels';
import { preRenderer, ReviewPanel, Sidebar, SourceRenderer } from './views';

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
  /** Opens (or shows) a view by its args `{view: 'review'|'held'|'budget', domain, id?}`; the restorer uses it. */
  export const openView = 'fednb:open-view';
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

/** JupyterLab's read-only CodeMirror editor for a request's source; a <pre> without editors. */
function editorRenderer(editors: IEditorServices | null): SourceRenderer {
  if (!editors) {
    return preRenderer;
  }
  return (source, host) => {
    const model = new CodeEditor.Model({ mimeType: 'text/x-python' });
    model.sharedModel.setSource(source);
    const editor = editors.factoryService.newInlineEditor({
      host,
      model,
      config: { readOnly: true, lineNumbers: true }
    });
    return {
      get isDisposed() {
        return editor.isDisposed;
      },
      dispose: () => {
        editor.dispose();
        model.dispose();
      }
    };
  };
}

type View = ReviewPanel | HeldPanel | BudgetPanel;

function parseArgs(args: Record<string, unknown>): IViewArgs {
  const view = args.view;
  if (view !== 'review' && view !== 'held' && view !== 'budget') {
    throw new Error(`no fednb view ${String(view)}: give view as review, held or budget`);
  }
  if (typeof args.domain !== 'string' || (view === 'review' && typeof args.id !== 'string')) {
    throw new Error('give the domain (and, for a review, the request id) to open a fednb view');
  }
  return { view, domain: args.domain, id: typeof args.id === 'string' ? args.id : undefined };
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
    const api = new FednbApi(serverFetcher());
    const model = new FednbModel(api, { interval: 10_000, maxInterval: 300_000 });
    const tracker = new WidgetTracker<MainAreaWidget<View>>({ namespace: 'fednb' });
    const renderSource = editorRenderer(editors);
    const decided = (): void => void model.refresh();

    const create = async (args: IViewArgs): Promise<View> => {
      const domain = await model.domain(args.domain);
      if (args.view === 'review') {
        return new ReviewPanel(new ReviewController(api, domain, args.id ?? '', decided), renderSource);
      }
      if (args.view === 'held') {
        return new HeldPanel(new HeldController(api, domain, decided));
      }
      return new BudgetPanel(new BudgetController(api, domain));
    };

    /** Shows the open view of these args, or opens one, tracked (and so restored after a reload). */
    const opening = new Map<string, Promise<View>>(); // views being created (a domain read away)
    const openView = async (args: IViewArgs): Promise<View> => {
      const key = viewKey(args);
      const existing = tracker.find(w => viewKey(w.content.controller.args) === key);
      if (existing) {
        app.shell.activateById(existing.id);
        return existing.content;
      }
      const pending = opening.get(key);
      if (pending) {
        return pending;
      }
      const created = create(args);
      opening.set(key, created);
      const content = await created.finally(() => opening.delete(key));
      const main = new MainAreaWidget<View>({ content });
      main.id = `${content.id}-main`;
      main.title.label = content.title.label;
      main.title.icon = ICON;
      main.title.closable = true;
      content.title.changed.connect(() => (main.title.label = content.title.label));
      void tracker.add(main);
      app.shell.add(main, 'main');
      app.shell.activateById(main.id);
      void content.controller.load();
      return content;
    };

    const current = <T extends View>(cls: new (...a: never[]) => T): T | null => {
      const content = tracker.currentWidget?.content;
      return content instanceof cls ? content : null;
    };

    const sidebar = new Sidebar(new RequestLists(model), {
      openRequest: (d, id) => void app.commands.execute(CommandIDs.openRequest, { domain: d.name, id }),
      openHeld: d => void app.commands.execute(CommandIDs.openHeld, { domain: d.name }),
      openBudget: d => void app.commands.execute(CommandIDs.openBudget, { domain: d.name })
    });
    sidebar.title.icon = ICON;
    app.shell.add(sidebar, 'left', { rank: 650 });
    if (restorer) {
      restorer.add(sidebar, 'fednb-sidebar');
      void restorer.restore(tracker, {
        command: CommandIDs.openView,
        args: w => ({ ...w.content.controller.args, id: w.content.controller.args.id ?? '' }),
        name: w => viewKey(w.content.controller.args)
      });
    }

    app.commands.addCommand(CommandIDs.open, {
      label: 'Federated requests: show the sidebar',
      execute: () => app.shell.activateById(sidebar.id)
    });
    app.commands.addCommand(CommandIDs.refresh, {
      label: 'Federated requests: refresh now',
      execute: () => model.refresh()
    });
    app.commands.addCommand(CommandIDs.openView, {
      label: 'Federated requests: open a view',
      execute: args => openView(parseArgs(args))
    });
    app.commands.addCommand(CommandIDs.openRequest, {
      label: 'Federated requests: open a request',
      execute: args => openView(parseArgs({ ...args, view: 'review' }))
    });
    app.commands.addCommand(CommandIDs.approve, {
      label: 'Federated requests: approve the request under review',
      isEnabled: () => !!current(ReviewPanel)?.controller.canDecide,
      execute: async args => {
        const release = args.release === 'auto' ? 'auto' : 'manual';
        await current(ReviewPanel)?.controller.approve(release);
      }
    });
    app.commands.addCommand(CommandIDs.deny, {
      label: 'Federated requests: deny the request under review…',
      isEnabled: () => !!current(ReviewPanel)?.controller.canDecide,
      execute: async args => {
        const panel = current(ReviewPanel);
        let reason = typeof args.reason === 'string' ? args.reason : '';
        if (!reason) {
          const r = await InputDialog.getText({ title: 'Reason to deny (the scientist sees it)' });
          reason = r.button.accept ? (r.value ?? '') : '';
        }
        if (panel && reason) {
          await panel.controller.deny(reason);
        }
      }
    });
    app.commands.addCommand(CommandIDs.openHeld, {
      label: 'Federated requests: held results',
      execute: args => {
        const d = typeof args.domain === 'string' ? args.domain : model.domains.find(x => x.role === 'owner')?.name;
        return d ? openView({ view: 'held', domain: d }) : undefined;
      }
    });
    app.commands.addCommand(CommandIDs.release, {
      label: 'Federated requests: release the selected held result',
      isEnabled: () => !!current(HeldPanel)?.controller.selected,
      execute: () => current(HeldPanel)?.controller.release()
    });
    app.commands.addCommand(CommandIDs.withhold, {
      label: 'Federated requests: withhold the selected held result',
      isEnabled: () => !!current(HeldPanel)?.controller.selected,
      execute: () => current(HeldPanel)?.controller.withhold()
    });
    app.commands.addCommand(CommandIDs.openBudget, {
      label: 'Federated requests: budgets',
      execute: args => {
        const d = typeof args.domain === 'string' ? args.domain : model.domains[0]?.name;
        return d ? openView({ view: 'budget', domain: d }) : undefined;
      }
    });
    if (palette) {
      const category = 'Federated requests';
      for (const command of Object.values(CommandIDs)) {
        if (command !== CommandIDs.openRequest && command !== CommandIDs.openView) {
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
