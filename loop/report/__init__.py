"""The final reports of a night's run (the seed's "Finish-Up Mode"), written into
`<workspace>/reports/`:

  final_condensed_story.md      the run in about a page: span, arc of improvements, Mentor, repairs, end
  final_paper_report.md         paper-style: Abstract, Setup, Data, Method, Experiments, Results, Mentor,
                                Failures and repairs, Limitations, Reproduce
  final_leaderboard_top{k}.json the top-k successful runs with their full configs and metrics
  final_leaderboard_top{k}.md   the same as a table
  plot_*.png                    800x450 plots linked from the paper report
  report.log                    the progress lines of every generation

Everything is read from the workspace files, never from the daemon, so a report can be written
while the loop runs or long after. Missing or torn files (a cleaned run folder, a crash mid-append)
make a thinner report, never a crash: an empty workspace still gets every file.

The sub-modules, one job each:

  data.py         the workspace read into typed records: events (cycles as CycleRecord), runs
                  (Run: a RunRecord plus outcome, metrics.json and promotion),
                  lineage, GEN_HEAD, state, finish-up request, storyline (ReportData, load_data)
  helpers.py      the report file names, the "no runs" sentence, and the small text and fact
                  helpers every writer shares (tables, span, improvements, failures, GEN_HEAD, ...)
  deciders.py     who decided the cycles: the offline policy, an LLM (its models), or a mix (Deciders)
  header.py       the paper's and the dashboard's header: machine, wall clock, seeds, compute, tokens,
                  who decided, the selection split (NightHeader, night_header)
  story.py        final_condensed_story.md (condensed_story)
  paper.py        final_paper_report.md (paper_report and its sections)
  datasection.py  its Data section and the data-leak warning (from logs/data_report.json)
  leaderboard.py  final_leaderboard_top{k}.json and .md (leaderboard_json, leaderboard_md)
  plots.py        the plot_*.png files (plot_best_over_cycles, ..., matplotlib Agg, no pyplot)
  usage.py        the "Use the model" section: the predict and export commands
  generate.py     the orchestration: generate_reports, with its progress in report.log
  final.py        finish-up's last step, called by the daemon: the reports once due, a final_reports event
  cli.py          the command-line entry: report_command, add_arguments, run_args
"""
from __future__ import annotations

from loop.report.cli import add_arguments, report_command, run_args
from loop.report.data import ReportData, Run, load_data
from loop.report.generate import generate_reports
from loop.report.helpers import NO_RUNS, PAPER_FILE, PLOTS, STORY_FILE
from loop.report.leaderboard import leaderboard_entries, leaderboard_json, leaderboard_md
from loop.report.paper import paper_report
from loop.report.plots import (
                               DPI,
                               FIGSIZE,
                               plot_best_over_cycles,
                               plot_per_class_best,
                               plot_runs_over_cycles,
                               plot_tokens_over_cycles,
)
from loop.report.story import condensed_story

__all__ = ["DPI", "FIGSIZE", "NO_RUNS", "PAPER_FILE", "PLOTS", "STORY_FILE", "ReportData", "Run",
           "add_arguments", "condensed_story", "generate_reports", "leaderboard_entries", "leaderboard_json",
           "leaderboard_md", "load_data", "paper_report", "plot_best_over_cycles", "plot_per_class_best",
           "plot_runs_over_cycles", "plot_tokens_over_cycles", "report_command", "run_args"]
