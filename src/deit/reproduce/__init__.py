"""`deit reproduce`: the paper's distillation tables (2, 3, 4), a data-efficiency study, a small-data study and a
teacher-choice study at small scale. studies: what each study trains; runner: training its runs (resumable across
sessions through the records in results/<preset>/results.json); plan: what --plan prints; tables: its README,
targets and plot; holdout, paired, teacher_choice, estimate: the teacher-choice study's validation split, statistics,
matched teachers and tables, and timing."""

from .holdout import closest_teacher, holdout_split, holdout_top1
from .paired import PairedDifference, paired_difference, t_quantile
from .records import decode_predictions, encode_predictions, fingerprint
from .runner import (StudyRun, predict_run, row_config, run_study, selected_runs, teacher_key, token_cosine_of_run,
                     train_command)
from .studies import STUDIES, Row, Study, data_efficiency_study, small_canvas_study, teacher_choice_study
from .tables import disagreement_table, plot_study, render_tables, target_lines
from .teacher_choice import closest_checkpoint, matched_teacher

__all__ = ["STUDIES", "PairedDifference", "Row", "Study", "StudyRun", "closest_checkpoint", "closest_teacher",
           "holdout_split", "holdout_top1", "paired_difference", "t_quantile", "teacher_choice_study", "data_efficiency_study", "decode_predictions",
           "disagreement_table", "encode_predictions", "fingerprint", "matched_teacher", "plot_study", "predict_run",
           "render_tables", "row_config", "run_study", "selected_runs", "small_canvas_study", "target_lines", "teacher_key",
           "token_cosine_of_run", "train_command"]
