"""Figure builders: plain functions from results to plotly Figures.

The pages draw them and the report export writes them, so what is exported is exactly what is on screen.
Builders never import Streamlit and never query the cache.
"""
