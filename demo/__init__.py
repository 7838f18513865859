"""demo: the Gradio web app (UI only; all model work goes through the vcap API)."""
