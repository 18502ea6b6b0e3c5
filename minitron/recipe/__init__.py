"""Recipes: a model family from one teacher, described in YAML and run stage by stage, resumably.

    from minitron.recipe import load_recipe, run_recipe
    run_recipe("recipes/smollm2-cpu.yaml", "runs/smollm2-cpu")     # or run_recipe("smollm2-cpu", ...)
"""
from .plan import describe_plan, plan_recipe
from .runner import RecipeInterrupted, plan_stages, run_recipe
from .schema import (
    SHIPPED_RECIPES,
    Recipe,
    Stage,
    load_recipe,
    parse_recipe,
    recipe_path,
)

__all__ = ["SHIPPED_RECIPES", "Recipe", "RecipeInterrupted", "Stage", "describe_plan", "load_recipe",
           "parse_recipe", "plan_recipe", "plan_stages", "recipe_path", "run_recipe"]
