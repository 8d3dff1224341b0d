"""The App API: the application's backend reads the directory and follows the event feed."""
