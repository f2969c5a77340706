"""Using a trained model: batched prediction (the Labeler), evaluation and SavedModel export."""
