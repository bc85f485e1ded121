"""Analysis above single runs: the advisor (measure, decide), transferability scores, studies on Optuna."""
