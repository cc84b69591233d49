//! `burnwatch top`: a live view of a running agent, refreshed every second, sorted by
//! burn (ratatui on crossterm). `q` quits.

use std::time::{Duration, Instant};

use anyhow::Result;
use ratatui::DefaultTerminal;
use ratatui::Frame;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, TableState};

use super::client::Client;
use super::table::{self, BURN_WINDOWS, clean};
use crate::api::types::{SeriesStatus, SlosResponse, sort_by_burn};

pub const AFTER_HELP: &str = "\
Keys: q or Esc quits, Up/Down (or k/j) select a row.

The view refreshes every second from the agent's /v1/slos. Rows are sorted by burn
(paging first, then ticketing, then by the 1h burn rate); colours follow the budget
status: red critical/exhausted, yellow warning/attention.

Examples:
  burnwatch top
  burnwatch top --agent http://10.0.3.7:9464";

const REFRESH: Duration = Duration::from_secs(1);

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub api: super::client::AgentArgs,
}

struct View {
    agent: String,
    data: Option<SlosResponse>,
    error: Option<String>,
    table: TableState,
}

pub fn run(args: &Args) -> Result<()> {
    let client = Client::connect(&args.api)?;
    // try_init() enters the alternate screen and raw mode, and restores the terminal
    // on panic; restore() undoes it on every other way out.
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        anyhow::bail!("top draws on a terminal; for scripts use `burnwatch status --json`");
    }
    let mut terminal = ratatui::try_init()?;
    let result = event_loop(&mut terminal, &client, &args.api.agent);
    ratatui::restore();
    result
}

fn event_loop(terminal: &mut DefaultTerminal, client: &Client, agent: &str) -> Result<()> {
    let mut view = View {
        agent: agent.to_owned(),
        data: None,
        error: None,
        table: TableState::default(),
    };
    loop {
        let fetched = Instant::now();
        match client.slos() {
            Ok(mut data) => {
                sort_by_burn(&mut data.series);
                view.data = Some(data);
                view.error = None;
            }
            Err(e) => view.error = Some(format!("{e:#}")),
        }
        terminal.draw(|f| draw(f, &mut view))?;
        while let Some(left) = (fetched + REFRESH).checked_duration_since(Instant::now()) {
            if !event::poll(left)? {
                break;
            }
            match event::read()? {
                Event::Key(k) if k.kind == KeyEventKind::Press => match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                        return Ok(());
                    }
                    KeyCode::Down | KeyCode::Char('j') => view.table.select_next(),
                    KeyCode::Up | KeyCode::Char('k') => view.table.select_previous(),
                    _ => {}
                },
                _ => {}
            }
            terminal.draw(|f| draw(f, &mut view))?;
        }
    }
}

fn status_style(s: &SeriesStatus) -> Style {
    match s.status.as_str() {
        "critical" | "exhausted" => Style::new().fg(Color::Red),
        "warning" | "attention" => Style::new().fg(Color::Yellow),
        _ => Style::new(),
    }
}

fn draw(f: &mut Frame, view: &mut View) {
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());

    let title = match &view.data {
        Some(d) => {
            let paging = d.series.iter().filter(|s| s.severity_rank() == 0).count();
            format!(
                "burnwatch top · node {} · {} SLOs · {} series · {paging} paging · {} probes",
                clean(&d.node, 40),
                d.slos.len(),
                d.series.len(),
                d.probes_attached.len()
            )
        }
        None => format!("burnwatch top · {}", clean(&view.agent, 64)),
    };
    f.render_widget(
        Paragraph::new(title).style(Style::new().add_modifier(Modifier::BOLD)),
        head,
    );

    let mut header = vec!["SLO", "TENANT", "BUDGET", "STATUS"];
    let burn_titles: Vec<String> = BURN_WINDOWS.iter().map(|w| format!("BURN{w}")).collect();
    header.extend(burn_titles.iter().map(String::as_str));
    header.extend(["ALERT", "FOR", "EXHAUSTED IN"]);
    let now = view.data.as_ref().map_or(0, |d| d.now);
    let rows: Vec<Row> = view
        .data
        .iter()
        .flat_map(|d| &d.series)
        .map(|s| {
            let mut cells = vec![
                Cell::from(clean(&s.slo, 28)),
                Cell::from(clean(&s.tenant, 20)),
                Cell::from(Line::from(table::budget(s)).right_aligned()),
                Cell::from(clean(&s.status, 9)),
            ];
            cells.extend(
                BURN_WINDOWS
                    .iter()
                    .map(|w| Cell::from(Line::from(table::burn(s.burn(w))).right_aligned())),
            );
            cells.push(Cell::from(table::alert(s)));
            cells.push(Cell::from(Line::from(table::since(s, now)).right_aligned()));
            cells.push(Cell::from(Line::from(table::exhaustion(s)).right_aligned()));
            Row::new(cells).style(status_style(s))
        })
        .collect();
    let mut widths = vec![
        Constraint::Min(12),
        Constraint::Min(8),
        Constraint::Length(8),
        Constraint::Length(9),
    ];
    widths.extend(BURN_WINDOWS.iter().map(|_| Constraint::Length(8)));
    widths.extend([
        Constraint::Length(18),
        Constraint::Length(8),
        Constraint::Length(12),
    ]);
    let empty = view.data.as_ref().is_some_and(|d| d.series.is_empty());
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(Style::new().add_modifier(Modifier::REVERSED)))
        .row_highlight_style(Style::new().add_modifier(Modifier::BOLD))
        .block(Block::bordered().title(if empty {
            " no (slo, tenant) has traffic yet "
        } else {
            " sorted by burn "
        }));
    f.render_stateful_widget(table, body, &mut view.table);

    let footer = match &view.error {
        Some(e) => Line::from(format!("agent unreachable: {}", clean(e, 200)))
            .style(Style::new().fg(Color::Red)),
        None => Line::from(format!(
            "q quit · ↑↓ select · refresh 1 s · {}",
            clean(&view.agent, 64)
        )),
    };
    f.render_widget(Paragraph::new(footer), foot);
}
