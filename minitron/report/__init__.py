"""The run report (`report.html`) and the model cards (`README.md`) of a family run.

    from minitron.report import build_report, write_model_card, write_model_cards
    build_report("runs/family")            # -> runs/family/report.html
    write_model_cards("runs/family")       # README.md in every finished stage's model folder
"""
from .card import model_card_info, write_model_card, write_model_cards
from .html import build_report
from .runfolder import load_run

__all__ = ["build_report", "load_run", "model_card_info", "write_model_card", "write_model_cards"]
